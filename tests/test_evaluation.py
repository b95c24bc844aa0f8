"""The evaluate API and CLI: recipes, cascade, worst case, shards, resume, reports, sanity checks."""

from __future__ import annotations

import json
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from gluon_robust.cli import main
from gluon_robust.data import ArraySource, load_data
from gluon_robust.errors import ConfigError
from gluon_robust.evaluation import RECIPES, evaluate, merge_reports
from gluon_robust.evaluation.recipes import build_attacks, custom_recipe, get_recipe
from gluon_robust.evaluation.report import comparable
from gluon_robust.evaluation.sanity import SanityWarning, report_warnings
from gluon_robust.evaluation.state import STATE_NAME, StateFile
from gluon_robust.fingerprint import combine
from gluon_robust.model import load_classifier
from gluon_robust.reporting import MANIFEST_NAME


class _Head(gluon.HybridBlock):
    """A small MLP with an optional twist in front (quantise, dropout) or behind (softmax)."""

    def __init__(self, twist: str = "none", seed: int = 0) -> None:
        super().__init__()
        self.twist = twist
        mx.random.seed(seed)
        with self.name_scope():
            self.body = gluon.nn.HybridSequential()
            self.body.add(gluon.nn.Dense(32, activation="relu"), gluon.nn.Dense(10))
        self.body.initialize(mx.init.Xavier(magnitude=2.0))

    def hybrid_forward(self, F, x):  # noqa: N803 (Gluon's signature)
        if self.twist == "round":
            x = F.round(x * 4) / 4
        if self.twist == "random":
            x = x + F.random.normal_like(x, scale=0.1)
        out = self.body(x)
        return F.softmax(out) if self.twist == "softmax" else out


def _model(twist: str = "none"):
    return load_classifier(_Head(twist), input_size=(1, 8, 8), mean=0.5, std=0.25)


def _source(model, n: int = 24, seed: int = 3) -> ArraySource:
    x = np.random.RandomState(seed).rand(n, 1, 8, 8).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = _model().predict(x).argmax(axis=1) if model is None else model.predict(x).argmax(axis=1)
    return ArraySource(x, y.astype(np.int64), name="random8x8")


@pytest.fixture
def plain():
    return _model()


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ------------------------------------------------------------------- recipes
def test_recipes_are_fixed_data():
    assert {"standard", "plus", "rand", "standard-lite", "apgd-lite"} <= set(RECIPES)
    with pytest.raises(TypeError):
        RECIPES["new"] = ()  # type: ignore[index]
    assert [s.label for s in get_recipe("standard")][:2] == ["apgd-ce", "apgd-t"]
    assert all(dict(s.options).get("eot_samples") == 20 for s in get_recipe("rand"))
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        get_recipe("nope")
    with pytest.raises(ConfigError, match="eps must be positive numbers, got -0.1"):
        build_attacks(get_recipe("apgd-lite"), eps=[-0.1], norm="linf")
    with pytest.raises(ConfigError, match="unknown attack 'nope'"):
        build_attacks(custom_recipe(["nope"]), eps=[0.1], norm="linf")


def test_unregistered_stage_is_an_error_naming_it():
    from gluon_robust.evaluation.recipes import Stage

    stages = (Stage("apgd-ce", "apgd", {"steps": 5}), Stage("missing", "no-such-attack", {}))
    with pytest.raises(ConfigError, match="stage 'missing' names attack 'no-such-attack', which is not registered; "
                                          "valid attacks: .*apgd"):
        build_attacks(stages, eps=[0.1, 0.2], norm="l2")
    built = build_attacks(stages[:1], eps=[0.1, 0.2], norm="l2")
    assert [label for label, _ in built] == ["apgd-ce", "apgd-ce"]
    assert [a.eps for _, a in built] == [0.1, 0.2] and all(a.norm.name == "l2" for _, a in built)


#: AutoAttack's standard version as Croce & Hein (2020) and their reference code configure it, written out
#: here by hand so that the recipe is checked against the paper, not against itself.
AUTOATTACK_STANDARD = [
    ("apgd-ce", "APGD", {"steps": 100, "restarts": 1, "rho": 0.75, "alpha": 0.75, "random_start": True}),
    ("apgd-t", "APGDT", {"steps": 100, "restarts": 1, "rho": 0.75, "alpha": 0.75, "n_target_classes": 9}),
    ("fab-t", "FABT", {"steps": 100, "restarts": 1, "n_target_classes": 9, "alpha_max": 0.1, "eta": 1.05,
                       "beta": 0.9}),
    # AutoAttack's n_queries=5000 counts iterations after the first evaluation; max_queries counts evaluations
    ("square", "SquareAttack", {"max_queries": 5001, "p_init": 0.8, "rescale_schedule": False}),
]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_standard_is_autoattack_parameter_for_parameter(norm):
    built = build_attacks(get_recipe("standard"), eps=[0.3], norm=norm, seed=7)
    assert [label for label, _ in built] == [label for label, _, _ in AUTOATTACK_STANDARD]
    for (label, attack), (_, cls, settings) in zip(built, AUTOATTACK_STANDARD):
        assert type(attack).__name__ == cls
        assert attack.eps == 0.3 and attack.norm.name == norm and attack.seed == 7
        for key, value in settings.items():
            assert getattr(attack, key) == value, (label, key)
    ce, dlr = built[0][1].loss, built[1][1].loss
    logits = mx.nd.array([[3.0, 1.0, 0.5, 0.2, -1.0]])
    label = mx.nd.array([0])
    # cross-entropy of the true class, and the targeted DLR loss of Croce & Hein (2020), eq. (7), towards class 1
    expected_ce = np.log(np.exp([3.0, 1.0, 0.5, 0.2, -1.0]).sum()) - 3.0
    assert float(ce(logits, label).asscalar()) == pytest.approx(expected_ce, rel=1e-4)
    expected_dlr = -(3.0 - 1.0) / (3.0 - (0.5 + 0.2) / 2)
    assert float(dlr(logits, label, mx.nd.array([1])).asscalar()) == pytest.approx(expected_dlr, rel=1e-4)


def test_lighter_recipes_say_what_they_change():
    from gluon_robust.evaluation.recipes import RECIPES, RECIPE_SUMMARIES, deviations

    assert deviations(get_recipe("standard")) == []
    assert set(RECIPE_SUMMARIES) == set(RECIPES)
    lite = deviations(get_recipe("standard-lite"))
    assert lite == ["adds pgd-40", "apgd-t n_target_classes=3 (standard: 9)",
                    "square max_queries=1000 (standard: 5001)", "square p_init=0.05 (standard: 0.8)",
                    "square rescale_schedule=True (standard: False)", "no fab-t"]
    assert "apgd-ce steps=20 (standard: 100)" in deviations(get_recipe("apgd-lite"))
    # plus only adds attacks and restarts to standard: it is never weaker
    assert deviations(get_recipe("plus")) == ["apgd-ce restarts=5 (standard: 1)", "adds apgd-dlr", "adds fab"]


def test_bad_arguments_name_the_parameter(plain, tmp_path):
    source = _source(plain)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, got 0"):
        evaluate(plain, source, attacks=["fgsm"], eps=[0.1], batch_size=0)
    with pytest.raises(ConfigError, match=r"shard must be \(k, n\) with 0 <= k < n, got \(3, 3\)"):
        evaluate(plain, source, attacks=["fgsm"], eps=[0.1], shard=(3, 3))
    with pytest.raises(ConfigError, match="resume=True needs out_dir"):
        evaluate(plain, source, attacks=["fgsm"], eps=[0.1], resume=True)
    with pytest.raises(ConfigError, match="attacks must name at least one attack"):
        evaluate(plain, source, attacks=[], eps=[0.1])


# --------------------------------------------------------------- the engine
def test_worst_case_is_never_above_any_single_attack(plain):
    report = _quiet(evaluate, plain, _source(plain), attacks=["fgsm", "bim", "pgd"], eps=[0.05, 0.1, 0.2],
                    batch_size=10, progress=False)
    assert report["n"] == 24 and report["clean_accuracy"] == 1.0
    assert {"n", "clean_accuracy", "attacks", "worst_case", "per_sample", "warnings", "seed", "versions"} <= set(report)
    for w in report["worst_case"]:
        mine = [a for a in report["attacks"] if (a["norm"], a["eps"]) == (w["norm"], w["eps"])]
        assert len(mine) == 3
        assert all(w["robust_accuracy"] <= a["cumulative_robust_accuracy"] for a in mine)
        assert w["robust_accuracy"] == mine[-1]["cumulative_robust_accuracy"]
        key = f"{w['norm']}@{w['eps']:g}"
        robust = [s["robust"][key] for s in report["per_sample"]]
        assert np.mean(robust) == pytest.approx(w["robust_accuracy"])
        for s in report["per_sample"]:
            assert (s["broken_by"][key] is None) == (s["robust"][key] or s["label"] != s["clean_prediction"])
    # cascade: a later stage only runs on points every earlier stage of its threat model failed on
    for s in report["per_sample"]:
        for k, a in enumerate(report["attacks"]):
            earlier = [j for j in range(k) if (report["attacks"][j]["norm"], report["attacks"][j]["eps"]) ==
                       (a["norm"], a["eps"])]
            if any(s["outcomes"][j]["broken"] for j in earlier):
                assert not s["outcomes"][k]["attacked"]
    # every successful perturbation respects its budget
    for k, a in enumerate(report["attacks"]):
        dist = [s["outcomes"][k]["distance"] for s in report["per_sample"] if s["outcomes"][k]["attacked"]]
        assert all(d <= a["eps"] + 1e-6 for d in dist) and a["invalid"] == 0


def _result_of(report):
    """What sharding must not change: :func:`comparable` without the data fingerprint (of the shards when merged)."""
    return {k: v for k, v in comparable(report).items() if k not in ("fingerprint", "merged_shards")}


def _assert_merged_equals_whole(merged, whole, shards):
    """The merged report is the whole run's, made with its weights and recipe, and lists each shard's data."""
    assert _result_of(merged) == _result_of(whole)
    for part in ("weights", "recipe"):
        assert merged["fingerprint"][part] == whole["fingerprint"][part]
    shards = sorted(shards, key=lambda r: r["shard"]["k"])
    assert [s["data"] for s in merged["merged_shards"]] == [r["fingerprint"]["data"] for r in shards]
    assert [(s["start"], s["stop"]) for s in merged["merged_shards"]] == [(r["shard"]["start"], r["shard"]["stop"])
                                                                          for r in shards]
    assert merged["fingerprint"]["data"] == combine([r["fingerprint"]["data"] for r in shards])
    assert len({r["fingerprint"]["data"] for r in shards} | {whole["fingerprint"]["data"]}) == len(shards) + 1


def test_sharded_then_merged_equals_unsharded(plain, tmp_path):
    source = _source(plain, n=23)
    kwargs = dict(attacks=["fgsm", "apgd"], eps=[0.05, 0.2], batch_size=4, progress=False, max_examples=5)
    whole = _quiet(evaluate, plain, source, out_dir=tmp_path / "whole", **kwargs)
    dirs = []
    for k in (2, 0, 1):
        dirs.append(tmp_path / f"shard{k}")
        part = _quiet(evaluate, plain, source, out_dir=dirs[-1], shard=(k, 3), **kwargs)
        assert part["shard"]["k"] == k and 7 <= part["n"] <= 8
    merged = _quiet(merge_reports, dirs, tmp_path / "merged")
    _assert_merged_equals_whole(merged, whole, [json.loads((d / "report.json").read_text()) for d in dirs])
    on_disk = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert _result_of(on_disk) == _result_of(json.loads((tmp_path / "whole" / "report.json").read_text()))
    a, b = np.load(tmp_path / "whole" / "examples.npz"), np.load(tmp_path / "merged" / "examples.npz")
    assert len(a["index"]) == 5 and all(np.array_equal(a[k], b[k]) for k in a.files)
    with pytest.raises(ConfigError, match=r"each shard 0..2 of 3 exactly once, got \[0, 2\]"):
        merge_reports([dirs[0], dirs[1]])
    with pytest.raises(ConfigError, match="unsharded run"):
        merge_reports([tmp_path / "whole"])


def test_resume_after_an_interruption_gives_the_same_report(plain, tmp_path, monkeypatch):
    source = _source(plain, n=20)
    kwargs = dict(attacks=["fgsm", "pgd"], eps=[0.1], batch_size=5, progress=False, seed=4)
    reference = _quiet(evaluate, plain, source, out_dir=tmp_path / "ref", **kwargs)

    original = StateFile.save
    saves = []

    def failing_save(self, pos, result):
        original(self, pos, result)
        saves.append(pos)
        if len(saves) == 1:
            raise RuntimeError("injected interruption")

    monkeypatch.setattr(StateFile, "save", failing_save)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="injected"):
        _quiet(evaluate, plain, source, out_dir=out, **kwargs)
    assert (out / STATE_NAME).exists() and not (out / "report.json").exists()
    resumed = _quiet(evaluate, plain, source, out_dir=out, resume=True, **kwargs)
    assert saves == [5, 10, 15, 20]  # the first batch was not redone
    assert comparable(resumed) == comparable(reference)
    assert not (out / STATE_NAME).exists() and (out / "report.html").exists()
    with pytest.raises(ConfigError, match="made with different recipe than this run"):
        monkeypatch.setattr(StateFile, "save", lambda self, pos, result: (original(self, pos, result), 1 / 0))
        with pytest.raises(ZeroDivisionError):
            _quiet(evaluate, plain, source, out_dir=out, **kwargs)
        _quiet(evaluate, plain, source, out_dir=out, resume=True, **dict(kwargs, seed=5))


def test_report_files(plain, tmp_path):
    report = _quiet(evaluate, plain, _source(plain, n=12), attacks=["pgd"], eps=[0.1, 0.3], batch_size=12,
                    out_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME, "examples.npz", "report.html", "report.json",
                                                          "report.md"]
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") in (3, 4) and "<script" not in html and "src=\"http" not in html
    assert "worst case" in (tmp_path / "report.md").read_text().lower()
    assert report["seed"] == 0 and "mxnet" in report["versions"]
    for a in report["attacks"]:
        assert {"name", "norm", "eps", "cumulative_robust_accuracy", "seconds", "queries"} <= set(a)


# ------------------------------------------------------------ sanity checks
@pytest.mark.parametrize("twist, expected", [
    ("random", "the model is random"),
    ("softmax", "look like probabilities"),
    ("round", "zero or NaN input gradient"),
])
def test_sanity_checks_fire(twist, expected):
    model = _model(twist)
    source = _source(model if twist != "random" else None, n=16)
    with pytest.warns(SanityWarning, match=expected):
        report = evaluate(model, source, attacks=["fgsm"], eps=[0.05], batch_size=16, progress=False)
    assert any(expected in w for w in report["warnings"])


def test_unbounded_attack_check_fires_on_masked_gradients():
    model = _model("round")
    report = _quiet(evaluate, model, _source(model, n=16), attacks=["fgsm"], eps=[0.05], progress=False)
    assert any("unbounded PGD" in w for w in report["warnings"])
    assert report["sanity"]["unbounded_accuracy"] > 0.05


def _fake_report(rows, attacks, worst, clean=1.0):
    return {"attacks": attacks, "per_sample": [{"outcomes": r} for r in rows], "worst_case": worst,
            "clean_accuracy": clean}


def test_report_checks_fire_on_synthetic_reports():
    white = {"name": "apgd-ce", "norm": "linf", "eps": 0.1, "black_box": False, "invalid": 0}
    black = {"name": "square", "norm": "linf", "eps": 0.1, "black_box": True, "invalid": 0}
    rows = [[{"broken": False}, {"broken": True}], [{"broken": True}, {"broken": False}]]
    worst = [{"norm": "linf", "eps": 0.1, "robust_accuracy": 0.0}]
    assert any("black-box square broke 1 points" in m for m in report_warnings(_fake_report(rows, [white, black], worst)))
    assert report_warnings(_fake_report([[{"broken": True}, {"broken": True}]], [white, black], worst)) == []
    rising = [{"norm": "linf", "eps": 0.1, "robust_accuracy": 0.2}, {"norm": "linf", "eps": 0.2, "robust_accuracy": 0.5}]
    assert any("rises from 20.0%" in m for m in report_warnings(_fake_report([], [], rising)))
    flat = [{"norm": "l2", "eps": 0.5, "robust_accuracy": 0.9}, {"norm": "l2", "eps": 2.0, "robust_accuracy": 0.9}]
    assert any("does not fall" in m for m in report_warnings(_fake_report([], [], flat, clean=0.9)))
    bad = dict(white, invalid=3)
    assert any("3 points outside the eps-ball" in m for m in report_warnings(_fake_report([], [bad], worst)))


def test_sanity_checks_stay_silent_on_the_reference_model():
    model = load_classifier("mnist_resnet20")
    source = load_data("mnist-sample", split="test", limit=12, input_size=model.input_size[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("error", SanityWarning)
        report = evaluate(model, source, recipe="apgd-lite", eps=[0.1, 0.2], batch_size=12, progress=False, probe_size=12)
    assert report["warnings"] == []
    assert report["worst_case"][0]["robust_accuracy"] >= report["worst_case"][1]["robust_accuracy"]


# ---------------------------------------------------------------------- CLI
def test_cli_evaluate_shards_and_merge(tmp_path, capsys):
    common = ["--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "6", "--attacks", "fgsm,pgd",
              "--eps", "0.05,0.1", "--batch-size", "3", "--no-progress"]
    assert main(["evaluate", *common, "--out", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    assert "worst case" in out and "report:" in out
    for k in (0, 1):
        assert main(["evaluate", *common, "--shard", f"{k}/2", "--out", str(tmp_path / f"s{k}")]) == 0
    assert main(["merge-reports", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")]) == 0
    whole = json.loads((tmp_path / "all" / "report.json").read_text())
    merged = json.loads((tmp_path / "m" / "report.json").read_text())
    _assert_merged_equals_whole(merged, whole, [json.loads((tmp_path / f"s{k}" / "report.json").read_text())
                                                for k in (0, 1)])
    assert f"fingerprint: weights {whole['fingerprint']['weights'][:12]}" in out
    assert whole["args"]["eps"] == [0.05, 0.1] and whole["recipe"] == "custom"


def test_cli_evaluate_errors(tmp_path, capsys):
    assert main(["evaluate", "--config", "mnist_resnet20", "--data", "mnist-sample", "--shard", "2/2",
                 "--out", str(tmp_path)]) == 2
    assert "shard must be K/N" in capsys.readouterr().err
    assert main(["evaluate", "--config", "mnist_resnet20", "--data", "mnist-sample", "--recipe", "nope",
                 "--out", str(tmp_path)]) == 2

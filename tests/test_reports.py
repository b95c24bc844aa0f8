"""Evaluation reports and detection rates: one denominator everywhere, honest plots, real paths.

The expected values come from per-sample masks built by hand here (or from
hand-computed closed forms), never from the report code under test.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import numpy as np
import pytest

from gluon_robust.cli import main
from gluon_robust.data import load_data
from gluon_robust.evaluation.report import (
    _accuracy_figure, _grid_figure, _markdown, _norm_figure, _stage_figure, stage_accuracies, stage_counts,
    summary_table, write_report,
)
from gluon_robust.evaluation.robustness import AttackOutcome, RobustnessResult

N = 10
#: Samples 8 and 9 are misclassified clean; the cascade's per-stage masks of two threat models, by hand.
LABELS = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
CLEAN_PRED = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 0])
#: (name, eps, broken samples); "b" runs only on what "a" left robust, at each eps.
STAGES = [("a", 0.1, [0, 1, 2]), ("b", 0.1, [3, 4]), ("a", 0.3, [0, 1, 2, 3, 4]), ("b", 0.3, [5, 6, 7])]
#: Robust after each stage, of all 10 samples, counted by hand: 8 correct; 8-3, 5-2; 8-5, 3-3.
HAND = [0.5, 0.3, 0.3, 0.0]


def _result() -> RobustnessResult:
    correct = CLEAN_PRED == LABELS
    outcomes, still = [], {}
    for name, eps, broken_idx in STAGES:
        todo = still.setdefault(eps, correct.copy())
        broken = np.zeros(N, bool)
        broken[broken_idx] = True
        assert not (broken & ~todo).any(), "the test's own cascade is inconsistent"
        distance = np.where(todo, eps if name == "a" else 0.5 * eps, np.nan)  # "b" uses half the budget
        outcomes.append(AttackOutcome(name=name, norm="linf", eps=eps, broken=broken, attacked=todo.copy(),
                                      distance=distance, queries=todo.astype(np.int64) * 10))
        todo &= ~broken
    return RobustnessResult(np.arange(N), LABELS, CLEAN_PRED, outcomes, cascade=True)


def _report() -> Dict:
    report = _result().to_report()
    report.update(model="hand-made", data="hand", recipe="custom", warnings=[], versions={}, norm="linf",
                  eps=[0.1, 0.3], seed=0)
    return report


def _independent_cumulative(report: Dict) -> List[float]:
    """Robust accuracy after each stage from the per-sample masks alone, over all samples."""
    samples = report["per_sample"]
    out = []
    for k, a in enumerate(report["attacks"]):
        same = [j for j in range(k + 1) if report["attacks"][j]["eps"] == a["eps"]]
        robust = [s["label"] == s["clean_prediction"] and not any(s["outcomes"][j]["broken"] for j in same)
                  for s in samples]
        out.append(sum(robust) / len(samples))
    return out


# ---------------------------------------------------------------- denominators
def test_cumulative_accuracy_is_over_all_samples_and_matches_hand_counts():
    report = _report()
    assert _independent_cumulative(report) == pytest.approx(HAND)
    assert [a["cumulative_robust_accuracy"] for a in report["attacks"]] == pytest.approx(HAND)
    assert all("robust_accuracy" not in a and "robust_accuracy_after" not in a for a in report["attacks"])
    # the last stage of each threat model is its worst case
    assert [w["robust_accuracy"] for w in report["worst_case"]] == pytest.approx([HAND[1], HAND[3]])


def test_terminal_markdown_and_html_show_the_same_per_stage_figures(tmp_path):
    report = _report()
    expected = [f"{100 * v:.1f}%" for v in HAND]
    rows = [line.split() for line in summary_table(report).splitlines()[2:] if line.split()[0] in ("a", "b")]
    assert [r[5] for r in rows] == expected
    assert [(int(r[3]), int(r[4])) for r in rows] == [(8, 3), (5, 2), (8, 5), (3, 3)]  # attacked, broken
    assert "of 10" in summary_table(report)

    examples = {"x": np.zeros((0, 1, 4, 4), np.float32), "x_adv": np.zeros((0, 1, 4, 4), np.float32),
                "y": np.zeros(0, np.int64), "pred": np.zeros(0, np.int64), "index": np.zeros(0, np.int64),
                "attack": np.zeros(0, np.int64)}
    write_report(tmp_path, report, examples)
    md_rows = [line.split("|")[1:-1] for line in (tmp_path / "report.md").read_text().splitlines()
               if line.startswith("| a ") or line.startswith("| b ")]
    assert [c[5].strip() for c in md_rows] == [f"{100 * v:.2f}%" for v in HAND]
    html = (tmp_path / "report.html").read_text()
    cells = re.findall(r"<tr><td>([ab])</td><td>linf</td><td>[\d.]+</td><td>\d+</td><td>\d+</td><td>([\d.]+%)</td>",
                       html)
    assert [c[1] for c in cells] == [f"{100 * v:.2f}%" for v in HAND]
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert [a["cumulative_robust_accuracy"] for a in on_disk["attacks"]] == pytest.approx(HAND)


def test_old_reports_are_read_with_the_cumulative_meaning():
    report = _report()
    old = json.loads(json.dumps(report))
    for a, own in zip(old["attacks"], ([0.5, 0.6, 0.3, 0.5])):  # the old per-stage figure: what the stage alone broke
        del a["cumulative_robust_accuracy"]
        a["robust_accuracy"] = own
    assert stage_accuracies(old) == pytest.approx(HAND)  # recomputed from the per-sample rows
    del old["per_sample"]
    for a, value in zip(old["attacks"], HAND):
        a["robust_accuracy_after"] = value
    assert stage_accuracies(old) == pytest.approx(HAND)


def test_merge_reads_old_shard_reports(tmp_path):
    import mxnet as mx
    from mxnet import gluon

    from gluon_robust.data import ArraySource
    from gluon_robust.evaluation import evaluate, merge_reports
    from gluon_robust.model import load_classifier

    mx.random.seed(0)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(16, activation="relu"), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier(magnitude=2.0))
    model = load_classifier(net, input_size=(1, 4, 4))
    x = np.random.RandomState(0).rand(8, 1, 4, 4).astype(np.float32)
    source = ArraySource(x, model.predict(x).argmax(axis=1).astype(np.int64))
    dirs = [tmp_path / f"s{k}" for k in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, d in enumerate(dirs):
            evaluate(model, source, attacks=["fgsm", "pgd"], eps=[0.2], batch_size=4, progress=False, out_dir=d,
                     shard=(k, 2))
        for d in dirs:  # rewrite each shard's report.json in the old format
            path = d / "report.json"
            old = json.loads(path.read_text())
            for a in old["attacks"]:
                a["robust_accuracy_after"] = a.pop("cumulative_robust_accuracy")
                a["robust_accuracy"] = 1.0
            path.write_text(json.dumps(old))
        merged = merge_reports(dirs, tmp_path / "merged")
    assert [a["cumulative_robust_accuracy"] for a in merged["attacks"]] == pytest.approx(
        _independent_cumulative(merged))


# ---------------------------------------------------------------------- plots
def _lines(ax) -> List:
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_accuracy_legend_lists_exactly_the_drawn_series():
    fig = _accuracy_figure(_report())
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    drawn = [line.get_label() for line in _lines(ax)]
    assert legend == drawn
    data = [tuple(map(tuple, line.get_xydata())) for line in _lines(ax) if line.get_label() != "clean"]
    assert len(set(data)) == len(data), "two drawn series coincide: one of them cannot be seen"
    # "after b" is the worst case at every eps: one line, both names
    assert "worst case (linf) = after b (linf)" in legend and "after a (linf)" in legend and len(legend) == 3
    after_a = [line for line in _lines(ax) if line.get_label() == "after a (linf)"][0]
    assert after_a.get_ydata().tolist() == pytest.approx([100 * HAND[0], 100 * HAND[2]])


def test_stage_bars_count_all_samples_and_list_only_drawn_segments():
    report = _report()
    counts = stage_counts(report)
    assert [(c["misclassified"], c["broken"], c["robust"]) for c in counts] == [
        (2, {"a": 3, "b": 2}, 3), (2, {"a": 5, "b": 3}, 0)]
    fig = _stage_figure(report)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    drawn = [c.get_label() for c in ax.containers]
    assert legend == drawn == ["misclassified clean", "broken by a", "broken by b", "robust"]
    heights = np.array([[p.get_height() for p in c.patches] for c in ax.containers])
    assert heights.sum(axis=0).tolist() == [N, N]  # every bar holds all samples
    # a stage that broke nothing draws no segment and gets no legend entry
    for s in report["per_sample"]:
        s["outcomes"][1]["broken"] = s["outcomes"][3]["broken"] = False
    legend = [t.get_text() for t in _stage_figure(report).axes[0].get_legend().get_texts()]
    assert legend == ["misclassified clean", "broken by a", "robust"]


def test_norm_histogram_is_relative_to_eps_and_skips_full_budget_stages():
    fig = _norm_figure(_report())  # "a" always uses the full budget, "b" half of it
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["b linf eps=0.1 (n=2)", "b linf eps=0.3 (n=3)"]
    assert ax.get_xlim() == pytest.approx((0.0, 1.05))
    full = _report()
    for s in full["per_sample"]:
        for o in s["outcomes"]:
            if o["distance"] is not None:
                o["distance"] = 0.1 if o is s["outcomes"][1] else 0.3
    assert _norm_figure(full) is None  # every L-inf example at its eps: nothing to show but a spike


def test_image_grid_states_eps(tmp_path):
    report = _report()
    x = np.random.RandomState(0).rand(2, 1, 4, 4).astype(np.float32)
    examples = {"x": x, "x_adv": np.clip(x + 0.3, 0, 1), "y": np.array([0, 1]), "pred": np.array([5, 6]),
                "index": np.array([0, 1]), "attack": np.array([2, 2])}
    fig = _grid_figure(report, examples, (0.0, 1.0))
    assert "eps=0.3" in fig._suptitle.get_text()
    assert all("eps=0.3" in row[1].get_title() for row in np.asarray(fig.axes).reshape(2, 3))
    assert "## Adversarial examples (linf eps=0.3)" in _markdown(report, examples)
    write_report(tmp_path, report, examples)
    assert "<h2>Clean / adversarial / amplified difference (linf eps=0.3)</h2>" in (tmp_path / "report.html").read_text()


# -------------------------------------------------------------------- detect
def test_detection_rates_match_hand_computed_values():
    from gluon_robust.commands.detect import detection_rates

    clean = [{"score": s} for s in (0.1, 0.4, 0.35, 0.8)]
    adversarial = [{"score": s} for s in (0.9, 0.35, 0.5)]
    rates = detection_rates(SimpleNamespace(threshold=0.45, fpr=0.05), clean, adversarial)
    assert rates["tpr_at_fpr"] == pytest.approx(2 / 3)  # 0.9 and 0.5 exceed 0.45
    assert rates["fpr"] == pytest.approx(1 / 4)  # 0.8 does
    # pairs (adversarial above clean, ties one half): 0.9 -> 4, 0.35 -> 1 + 0.5, 0.5 -> 3; of 3 x 4
    assert rates["roc_auc"] == pytest.approx(8.5 / 12)
    assert (rates["n_clean"], rates["n_adversarial"], rates["target_fpr"]) == (4, 3, 0.05)


def _brute_auc(neg: List[float], pos: List[float]) -> float:
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


@pytest.fixture(scope="module")
def attack_outputs(tmp_path_factory) -> Dict[str, Path]:
    """The tool's own outputs: clean digits as npz:, and the adversarial.npz of ``gluon-robust attack``."""
    root = tmp_path_factory.mktemp("outputs")
    x, y = load_data("mnist-sample", split="test", limit=12).arrays()
    np.savez(root / "clean.npz", x=x, y=y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["attack", "--config", "mnist_resnet20", "--data", f"npz:{root / 'clean.npz'}", "--attack",
                     "fgsm", "--eps", "0.2", "--batch-size", "12", "--no-progress", "--out", str(root / "fgsm")]) == 0
    return {"clean": root / "clean.npz", "adversarial": root / "fgsm" / "adversarial.npz"}


def test_detect_measures_tpr_fpr_and_auc_on_the_tools_own_outputs(attack_outputs, tmp_path, capsys):
    arrays = np.load(attack_outputs["adversarial"])
    assert "x_adv" in arrays.files and "x" not in arrays.files and 0 < arrays["success"].sum() < 12
    out = tmp_path / "det"
    capsys.readouterr()
    assert main(["detect", "--config", "mnist_resnet20", "--detector", "entropy", "--fpr", "0.1", "--fit-limit", "200",
                 "--clean", f"npz:{attack_outputs['clean']}", "--adversarial", str(attack_outputs["adversarial"]),
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "detections.json").read_text())
    threshold = saved["threshold"]
    neg = [r["score"] for r in saved["inputs"] if r["set"] == "clean"]
    pos = [r["score"] for r in saved["inputs"] if r["set"] == "adversarial"]
    assert len(neg) == 12 and len(pos) == int(arrays["success"].sum())
    assert sorted(r["index"] for r in saved["inputs"] if r["set"] == "adversarial") == \
        arrays["index"][arrays["success"]].tolist()
    for evaluation in (printed["evaluation"], saved["evaluation"]):
        assert evaluation["tpr_at_fpr"] == pytest.approx(np.mean(np.array(pos) > threshold))
        assert evaluation["fpr"] == pytest.approx(np.mean(np.array(neg) > threshold))
        assert evaluation["roc_auc"] == pytest.approx(_brute_auc(neg, pos))
        assert evaluation["adversarial_rows"] == 12
        assert evaluation["adversarial_not_successful"] == 12 - len(pos)
    with open(out / "detections.csv", newline="") as fh:
        assert {r["set"] for r in csv.DictReader(fh)} == {"clean", "adversarial"}


def test_detect_screens_adversarial_npz_with_x_adv(attack_outputs, tmp_path, capsys):
    out = tmp_path / "screen"
    assert main(["detect", "--config", "mnist_resnet20", "--detector", "confidence", "--fit-limit", "200",
                 "--data", f"npz:{attack_outputs['adversarial']}", "--out", str(out)]) == 0
    report = json.loads((out / "detections.json").read_text())
    assert report["n"] == 12 and "evaluation" not in report
    assert json.loads(capsys.readouterr().out)["n"] == 12


@pytest.mark.parametrize("extra, message", [
    (["--clean", "mnist-sample"], "--clean mnist-sample needs --adversarial too"),
    (["--adversarial", "ADV"], "--adversarial ADV needs --clean too"),
    (["--clean", "npz:/nonexistent/c.npz", "--adversarial", "ADV"], "--clean npz:/nonexistent/c.npz: file not found"),
    (["--clean", "nonsense", "--adversarial", "ADV"], "--clean 'nonsense' is not a data spec"),
    (["--clean", "mnist-sample", "--adversarial", "/nonexistent/a.npz"], "--adversarial /nonexistent/a.npz: file not found"),
    (["--clean", "mnist-sample", "--adversarial", "TEXT"], "--adversarial TEXT"),
    (["--clean", "mnist-sample", "--adversarial", "NOSUCCESS"], "none of its 3 inputs is a successful adversarial"),
    ([], "detect needs --data"),
])
def test_bad_detect_inputs_exit_2_with_one_line_before_any_work(extra, message, attack_outputs, tmp_path, capsys,
                                                                  monkeypatch):
    import gluon_robust.commands.detect as detect

    monkeypatch.setattr(detect, "model_from_args", lambda args: pytest.fail("loaded the model before checking"))
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    none = tmp_path / "none.npz"
    np.savez(none, x_adv=np.zeros((3, 1, 28, 28), np.float32), success=np.zeros(3, bool))
    paths = {"ADV": str(attack_outputs["adversarial"]), "TEXT": str(text), "NOSUCCESS": str(none)}
    extra = [paths.get(e, e) for e in extra]
    for key, value in paths.items():
        message = message.replace(key, value)
    out = tmp_path / "o"
    assert main(["detect", "--config", "mnist_resnet20", "--detector", "entropy", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


# ---------------------------------------------------------------------- demo
@pytest.mark.parametrize("configs, expected", [
    (["m1", "m2"], ["runs/x/m1/report.html", "runs/x/m2/report.html", "runs/x/contrast.md"]),
    (["m1"], ["runs/x/report.html"]),
])
def test_demo_prints_the_real_report_paths(configs, expected, monkeypatch, capsys):
    import gluon_robust.jobs as jobs

    def fake_run_demo(out_dir, *, configs, **kwargs):
        reports = [dict(_report(), config=c) for c in configs]
        return {"reports": reports, "contrast": jobs.contrast_reports(reports)}

    monkeypatch.setattr(jobs, "run_demo", fake_run_demo)
    args = ["demo", "--out", "runs/x"] + [w for c in configs for w in ("--config", c)]
    assert main(args) == 0
    out = capsys.readouterr().out
    for path in expected:
        assert path in out
    assert "CONFIG" not in out
    assert [jobs.demo_report_dir(c, configs) for c in configs] == (configs if len(configs) > 1 else ["."])

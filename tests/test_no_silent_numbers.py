"""No silent wrong numbers (issue 15): chance-level accuracy warns, broken weights are refused, a batch or a
slice with nothing to attack is an ordinary run, and the small CLI fixes (help names, suggestions, progress,
epoch lines)."""

from __future__ import annotations

import argparse
import ast
import csv
import json
import logging
import re
from pathlib import Path
from typing import Dict, List

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from gluon_robust.cli import COMMANDS, build_parser, main
from gluon_robust.data import load_data
from gluon_robust.errors import ConfigError, ModelError
from gluon_robust.evaluation import sanity
from gluon_robust.model import load_classifier

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "gluon_robust"
CHANCE_CAUSES = ("--labels", "--mean/--std/--bounds", "--params/--pretrained")
MODEL = ["--config", "mnist_resnet20", "--batch-size", "4"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Dict[str, object]:
    """Eight real digits, the reference model's predictions on them, and npz files with chosen labels.

    ``wrong.npz`` labels every digit ``(prediction + 1) % 10``, so the model gets none right;
    ``half.npz`` does so for the first four only (batch 1 of 2 at batch size 4 has nothing to attack).
    """
    x, y = load_data("mnist-sample", split="test", limit=8).arrays()
    pred = load_classifier("mnist_resnet20").predict(x).argmax(axis=1)
    folder = tmp_path_factory.mktemp("digits")
    wrong = (pred + 1) % 10
    half = np.concatenate([wrong[:4], pred[4:]])
    np.savez(folder / "wrong.npz", x=x, y=wrong)
    np.savez(folder / "half.npz", x=x, y=half)
    return {"x": x, "pred": pred, "wrong": folder / "wrong.npz", "half": folder / "half.npz"}


def _warning_lines(text: str) -> List[str]:
    return [line for line in text.splitlines() if line.startswith("WARNING: ")]


def _assert_chance_message(message: str) -> None:
    assert "at or below chance" in message
    for cause in CHANCE_CAUSES:
        assert cause in message


# ------------------------------------------------------------------ the chance rule itself
@pytest.mark.parametrize("n, correct, classes, warns", [
    (10, 1, 10, True),      # exactly chance
    (10, 2, 10, False),     # above
    (1000, 1, 1000, True),  # 0.1% of 1000 classes
    (1000, 2, 1000, False),
    (1, 0, 10, True),       # a single wrong sample is literally at chance: a warning, never a failure
    (3, 1, 10, False),
    (8, 0, None, False),    # unknown class count: no chance check
])
def test_accuracy_warnings_rule(n, correct, classes, warns):
    messages = sanity.accuracy_warnings(n, correct, classes)
    assert bool(messages) == warns
    if warns:
        _assert_chance_message(messages[0])
        assert f"({correct} of {n})" in messages[0]


def test_accuracy_warnings_for_no_samples():
    (message,) = sanity.accuracy_warnings(0, 0, 10)
    assert "no samples" in message


# ------------------------------------------------------------------ attack
def test_attack_with_every_label_wrong_is_a_complete_run(digits, tmp_path, capsys):
    out = tmp_path / "a"
    code = main(["attack", *MODEL, "--data", f"npz:{digits['wrong']}", "--attack", "pgd", "--eps", "0.1",
                 "--steps", "2", "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = json.loads(captured.out)  # stdout stays one JSON document; the warning goes to stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 8 and summary["attacked"] == 0
    assert summary["clean_accuracy"] == summary["robust_accuracy"] == summary["success_rate"] == 0.0
    (warning,) = summary["warnings"]
    _assert_chance_message(warning)
    assert printed["warnings"] == summary["warnings"]
    assert _warning_lines(captured.err) == [f"WARNING: {warning}"]
    with np.load(out / "adversarial.npz") as adv:
        np.testing.assert_array_equal(adv["x_adv"], digits["x"])  # nothing attacked: the clean inputs stand
        assert not adv["success"].any()
    with open(out / "per_sample.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and all(r["attacked"] == "0" for r in rows)


@pytest.mark.parametrize("limit", [8, 6])
def test_attack_with_a_batch_that_has_nothing_to_attack(digits, tmp_path, capsys, limit):
    out = tmp_path / "a"
    code = main(["attack", *MODEL, "--data", f"npz:{digits['half']}", "--limit", str(limit), "--attack", "pgd",
                 "--eps", "0.1", "--steps", "2", "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == limit and summary["attacked"] == limit - 4
    assert summary["clean_accuracy"] == pytest.approx((limit - 4) / limit)
    assert summary["warnings"] == [] and _warning_lines(captured.err) == []
    with open(out / "per_sample.csv", newline="") as fh:
        attacked = [r["attacked"] for r in csv.DictReader(fh)]
    assert attacked == ["0"] * 4 + ["1"] * (limit - 4)
    with np.load(out / "adversarial.npz") as adv:
        assert len(adv["x_adv"]) == limit
        np.testing.assert_array_equal(adv["x_adv"][:4], digits["x"][:4])


def test_attack_progress_is_labelled_and_counted_in_samples(digits, tmp_path, monkeypatch):
    from gluon_robust.evaluation import robustness

    bars = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            self.kwargs, self.updates = kwargs, []
            bars.append(self)

        def update(self, k):
            self.updates.append(k)

        def set_postfix_str(self, text):
            pass

        def close(self):
            pass

    monkeypatch.setattr(robustness, "tqdm", Recorder)
    assert main(["attack", *MODEL, "--data", f"npz:{digits['half']}", "--attack", "fgsm", "--eps", "0.1",
                 "--out", str(tmp_path / "a")]) == 0
    (bar,) = bars
    assert bar.kwargs["desc"] == "attack fgsm" and bar.kwargs["total"] == 8 and not bar.kwargs["disable"]
    assert sum(bar.updates) == 8 and max(bar.updates) <= 4  # samples, a batch at most at once
    # the four misclassified digits of batch 1 count as soon as the clean predictions are in
    assert bar.updates[0] == 4

    bars.clear()
    assert main(["attack", *MODEL, "--data", f"npz:{digits['half']}", "--attack", "fgsm", "--eps", "0.1",
                 "--no-progress", "--out", str(tmp_path / "b")]) == 0
    assert bars[0].kwargs["disable"]


# ------------------------------------------------------------------ evaluate and merge-reports
def test_evaluate_with_every_label_wrong_warns_and_writes_the_report(digits, tmp_path, capsys):
    out = tmp_path / "e"
    code = main(["evaluate", *MODEL, "--data", f"npz:{digits['wrong']}", "--attacks", "fgsm", "--eps", "0.1",
                 "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 8 and report["clean_accuracy"] == 0.0 and report["num_classes"] == 10
    assert [a["attacked"] for a in report["attacks"]] == [0]
    assert [w["robust_accuracy"] for w in report["worst_case"]] == [0.0]
    chance = [w for w in report["warnings"] if "at or below chance" in w]
    assert len(chance) == 1
    _assert_chance_message(chance[0])
    assert f"WARNING: {chance[0]}" in _warning_lines(captured.out)
    assert (out / "report.html").is_file() and (out / "report.md").is_file()


def test_evaluate_empty_shards_and_their_merge(tmp_path, capsys):
    common = [*MODEL, "--data", "mnist-sample", "--limit", "2", "--attacks", "fgsm", "--eps", "0.1",
              "--no-progress"]
    sizes = []
    for k in range(4):  # 2 samples in 4 shards: shards 0 and 2 are empty
        assert main(["evaluate", *common, "--shard", f"{k}/4", "--out", str(tmp_path / f"s{k}")]) == 0
        report = json.loads((tmp_path / f"s{k}" / "report.json").read_text())
        sizes.append(report["n"])
        if report["n"] == 0:
            assert report["clean_accuracy"] == 0.0 and report["per_sample"] == []
            assert [a["attacked"] for a in report["attacks"]] == [0]
            assert any("no samples" in w for w in report["warnings"])
    assert sizes == [0, 1, 0, 1]
    assert main(["evaluate", *common, "--out", str(tmp_path / "whole")]) == 0
    assert main(["merge-reports", *[str(tmp_path / f"s{k}") for k in range(4)], "--out", str(tmp_path / "all")]) == 0
    capsys.readouterr()
    merged = json.loads((tmp_path / "all" / "report.json").read_text())
    whole = json.loads((tmp_path / "whole" / "report.json").read_text())
    assert merged["n"] == 2 and [s["index"] for s in merged["per_sample"]] == [0, 1]
    for key in ("clean_accuracy", "worst_case", "warnings"):
        assert merged[key] == whole[key]


# ------------------------------------------------------------------ certify
def test_certify_with_every_label_wrong_warns(digits, tmp_path, capsys):
    out = tmp_path / "c"
    code = main(["certify", *MODEL, "--data", f"npz:{digits['wrong']}", "--n0", "4", "--n", "8",
                 "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "certify.json").read_text())
    assert report["n_points"] == 8 and report["clean_accuracy"] == 0.0
    (warning,) = report["warnings"]
    _assert_chance_message(warning)
    assert _warning_lines(captured.out) == [f"WARNING: {warning}"]


def test_certify_on_the_reference_digits_has_no_warning(tmp_path, capsys):
    assert main(["certify", *MODEL, "--data", "mnist-sample", "--limit", "4", "--n0", "4", "--n", "8",
                 "--no-progress", "--out", str(tmp_path / "c")]) == 0
    report = json.loads((tmp_path / "c" / "certify.json").read_text())
    assert report["warnings"] == [] and report["clean_accuracy"] >= 0.75
    assert _warning_lines(capsys.readouterr().out) == []


def test_certify_source_on_an_empty_slice():
    from gluon_robust.commands.certify import certify_source

    model = load_classifier("mnist_resnet20")
    empty = load_data("mnist-sample", split="test", limit=4).subset(slice(0, 0))
    with pytest.warns(sanity.SanityWarning, match="no samples"):
        report = certify_source(model, empty, sigma=0.25, n0=4, n=8, progress=False)
    assert report["n_points"] == 0 and report["points"] == [] and report["clean_accuracy"] == 0.0
    assert all(acc == 0.0 for acc in report["certified_accuracy"].values())


# ------------------------------------------------------------------ detect
def test_detect_with_wrong_calibration_labels_warns(digits, tmp_path, capsys):
    out = tmp_path / "d"
    code = main(["detect", *MODEL, "--detector", "entropy", "--fit-limit", "16", "--data", f"npz:{digits['wrong']}",
                 "--calib-data", f"npz:{digits['wrong']}", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "detections.json").read_text())
    assert report["n"] == 8 and report["calibration"]["calibration_correct"] == 0
    (warning,) = report["warnings"]
    _assert_chance_message(warning)
    assert json.loads(captured.out)["warnings"] == [warning]
    assert _warning_lines(captured.err) == [f"WARNING: {warning}"]


def test_detect_screens_inputs_nobody_classifies_correctly_without_warning(digits, tmp_path, capsys):
    # the screened inputs may be adversarial: their accuracy is no sign of a setup mistake
    out = tmp_path / "d"
    assert main(["detect", *MODEL, "--detector", "entropy", "--fit-limit", "16", "--data", f"npz:{digits['wrong']}",
                 "--out", str(out)]) == 0
    report = json.loads((out / "detections.json").read_text())
    assert report["n"] == 8 and report["warnings"] == []
    assert report["calibration"]["calibration_correct"] >= 3  # 4 held-out real digits


# ------------------------------------------------------------------ weights
def _nan_params(path: Path) -> Path:
    weights = mx.nd.load(str(REPO / "model_configs" / "mnist_resnet20.params"))
    first = sorted(weights)[0]
    weights[first] = weights[first] * np.nan
    mx.nd.save(str(path), weights)
    return path


@pytest.mark.parametrize("command", [
    ["attack", "--attack", "fgsm", "--eps", "0.1"],
    ["evaluate", "--attacks", "fgsm", "--eps", "0.1"],
    ["certify", "--n0", "4", "--n", "8"],
    ["detect", "--detector", "entropy", "--fit-limit", "16"],
])
def test_nan_weights_are_a_one_line_error(tmp_path, capsys, command):
    params = _nan_params(tmp_path / "nan.params")
    code = main([command[0], *MODEL, "--params", str(params), "--data", "mnist-sample", "--limit", "4",
                 *command[1:], "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and str(params) in err[0] and "NaN" in err[0]
    assert not (tmp_path / "o").exists()


def test_nan_weights_of_a_user_block_are_refused():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(10))
    net.initialize()
    net(mx.nd.zeros((1, 1, 4, 4)))
    net[0].bias.set_data(mx.nd.full((10,), np.inf))
    with pytest.raises(ModelError, match="NaN or infinite values .*bias"):
        load_classifier(net, input_size=(1, 4, 4))


def test_uninitialised_user_block_is_an_error():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(10))
    with pytest.raises(ModelError, match="not initialised"):
        load_classifier(net, input_size=(1, 4, 4))
    with pytest.raises(ModelError, match="not initialised"):
        load_classifier(net, classes=10)


def test_user_block_with_deferred_random_weights_warns(caplog):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(10))
    net.initialize()  # shapes unknown: the weights appear at the first forward pass, random
    with caplog.at_level(logging.WARNING, logger="gluon_robust"):
        load_classifier(net, input_size=(1, 4, 4))
    assert "random weights" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gluon_robust"):
        load_classifier(net, input_size=(1, 4, 4))  # now run once: its weights are whatever they are, no guess
    assert "random weights" not in caplog.text


def test_config_without_params_warns_of_random_weights(tmp_path, caplog):
    config = tmp_path / "random.yaml"
    text = (REPO / "model_configs" / "mnist_resnet20.yaml").read_text()
    config.write_text("\n".join(line for line in text.splitlines() if not line.startswith("params")) + "\n")
    with caplog.at_level(logging.WARNING, logger="gluon_robust"):
        load_classifier(str(config))
    assert "freshly initialised with random weights" in caplog.text and "--params" in caplog.text


def test_exported_symbol_without_params_names_the_file_it_expected(tmp_path, capsys):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(10))
    net.initialize()
    net.hybridize()
    net(mx.nd.zeros((1, 1, 28, 28)))
    net.export(str(tmp_path / "net"))
    (tmp_path / "net-0000.params").unlink()
    code = main(["evaluate", "--model", str(tmp_path / "net-symbol.json"), "--input-size", "1,28,28",
                 "--data", "mnist-sample", "--limit", "2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--params" in err[0] and "net-0000.params" in err[0]


def test_pretrained_without_the_cached_file_names_it(tmp_path, monkeypatch, capsys):
    from gluoncv.model_zoo import model_store  # GluonCV's own table of published weights

    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "home"))
    name = "cifar_resnet20_v1"
    expected = tmp_path / "home" / "models" / f"{name}-{model_store._model_sha1[name][:8]}.params"
    code = main(["evaluate", "--model", name, "--pretrained", "--data", "mnist-sample", "--limit", "2",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert str(expected) in err[0] and "--params" in err[0]


# ------------------------------------------------------------------ help texts and suggestions
_COMMAND_REFERENCE = re.compile(r"gluon-robust\s+([a-z][a-z0-9_-]*)")
#: prose such as "no file gluon-robust reads can run code": the program's name, not a command
_PROSE = {"reads", "never"}


def _package_texts() -> List[tuple]:
    """Every string constant of the package (help, docstrings, errors), each command's --help, README, docs."""
    texts = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.append((str(path.relative_to(REPO)), node.value))
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, child in sub.choices.items():
        texts.append((f"gluon-robust {name} --help", child.format_help()))
    texts.append(("gluon-robust --help", parser.format_help()))
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        texts.append((path.name, path.read_text(encoding="utf-8")))
    return texts


def test_every_command_named_in_help_and_errors_is_registered():
    build_parser()
    references = [(where, m.group(1)) for where, text in _package_texts() for m in _COMMAND_REFERENCE.finditer(text)]
    assert len(references) > 20  # the scan does see the help texts
    unknown = [(where, name) for where, name in references if name not in COMMANDS and name not in _PROSE]
    assert unknown == []


def test_the_command_scan_would_catch_an_unknown_name():
    found = [m.group(1) for m in _COMMAND_REFERENCE.finditer("see gluon-robust list-attacks, or gluon-robust\n  report")]
    assert [n for n in found if n not in COMMANDS] == ["list-attacks", "report"]


def _registries():
    from gluon_robust.attacks import ATTACKS
    from gluon_robust.defenses import DEFENSES
    from gluon_robust.detection import DETECTORS
    from gluon_robust.training import TRAINING_METHODS

    return {"attack": ATTACKS, "defence": DEFENSES, "detector": DETECTORS, "method": TRAINING_METHODS}


MISSPELLINGS = ["apgt", "apgdtt", "apgd_t", "apdg", "fabt2", "fab_t", "pgdd", "pdg", "fgms", "squre", "sqaure",
                "hsja2", "hopskip", "cwl2", "cw_linf", "simbadct", "deepfol", "bandit", "mifgs", "boundry", "transfr",
                "jpg", "medain", "bitdepht", "entrpy", "mahalanobis2", "magent", "trade", "pgdat", "fastat", "gausian"]


def _suggested(registry, word: str) -> List[str]:
    """The names the error for ``word`` suggests ("did you mean a, b?")."""
    with pytest.raises(ConfigError) as info:
        registry.resolve(word)
    hint = re.search(r"did you mean (.*?)\?", str(info.value))
    return hint.group(1).split(", ") if hint else []


@pytest.mark.parametrize("kind", ["attack", "defence", "detector", "method"])
def test_did_you_mean_suggests_only_listed_accepted_names(kind):
    registry = _registries()[kind]
    suggested = set()
    for word in MISSPELLINGS:
        if word in registry:
            continue
        names = _suggested(registry, word)
        for name in names:
            assert name in registry.names()  # listed in the error's "valid names"
            assert registry.resolve(name) == name  # and accepted as it is
        suggested.update(names)
    if kind == "attack":
        assert {"apgd-t", "fab-t", "square"} <= suggested  # close aliases (apgdt, fabt) map to their names


def test_get_attack_accepts_every_suggestion():
    from gluon_robust.attacks import ATTACKS, get_attack

    for word in MISSPELLINGS:
        for name in _suggested(ATTACKS, word):
            assert ATTACKS.factory(name).name == name  # the attack class registered under that very name
            if name in ("pgd", "fgsm", "apgd-t", "square"):
                assert get_attack(name, eps=0.1).name == name


# ------------------------------------------------------------------ README
def test_readme_shard_example_is_zero_based():
    from gluon_robust.evaluation import parse_shard

    text = (REPO / "README.md").read_text(encoding="utf-8")
    shards = re.findall(r"--shard (\d+/\d+) --out runs/s(\d+)", text)
    assert shards, "the README shows a sharded run"
    for spec, suffix in shards:
        k, n = parse_shard(spec)
        assert int(suffix) == k
    merged = re.search(r"gluon-robust merge-reports ((?:runs/s\d+ )+)--out", text)
    dirs = [int(d) for d in re.findall(r"runs/s(\d+)", merged.group(1))]
    assert dirs == list(range(n)) and (int(shards[0][1]), n) == (0, 4)


# ------------------------------------------------------------------ training epoch lines
def _epoch_lines(caplog) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gluon_robust.training.progress"]


@pytest.mark.parametrize("method", ["standard", "gaussian"])
def test_epoch_line_of_a_method_without_an_attack_has_no_eps(method, tmp_path, caplog):
    from gluon_robust.commands.train import run_training
    from gluon_robust.training.loop import TrainConfig

    cfg = TrainConfig(config="mnist_resnet20", method=method, epochs=1, limit=8, val_limit=4, batch_size=8,
                      save_dir=str(tmp_path), progress=False)
    with caplog.at_level(logging.INFO, logger="gluon_robust"):
        metrics = run_training(cfg)
    (line,) = _epoch_lines(caplog)
    assert line.startswith("epoch 1/1:") and "clean_accuracy=" in line and "train_loss=" in line
    assert "eps=" not in line and "pgd_accuracy" not in line and "steps=" not in line
    assert not {"eps", "steps", "pgd_accuracy"} & set(metrics["epochs"][0])


def test_epoch_line_of_an_adversarial_method_keeps_eps_and_pgd(tmp_path, caplog):
    from gluon_robust.commands.train import run_training
    from gluon_robust.training.loop import TrainConfig

    cfg = TrainConfig(config="mnist_resnet20", method="fast-at", eps=0.1, epochs=1, limit=8, val_limit=4, batch_size=8,
                      val_steps=1, guard=False, save_dir=str(tmp_path), progress=False)
    with caplog.at_level(logging.INFO, logger="gluon_robust"):
        run_training(cfg)
    (line,) = _epoch_lines(caplog)
    assert "eps=0.1" in line and "pgd_accuracy=" in line and "pgd_iters=1" in line


def test_standard_training_measures_pgd_when_asked(tmp_path, caplog):
    from gluon_robust.commands.train import run_training
    from gluon_robust.training.loop import TrainConfig

    cfg = TrainConfig(config="mnist_resnet20", method="standard", epochs=1, limit=8, val_limit=4, batch_size=8,
                      val_eps=0.1, val_steps=1, save_dir=str(tmp_path), progress=False)
    with caplog.at_level(logging.INFO, logger="gluon_robust"):
        metrics = run_training(cfg)
    (line,) = _epoch_lines(caplog)
    assert "pgd_accuracy=" in line and "pgd_iters=1" in line and "eps=" not in line
    assert 0.0 <= metrics["epochs"][0]["pgd_accuracy"] <= metrics["epochs"][0]["clean_accuracy"]

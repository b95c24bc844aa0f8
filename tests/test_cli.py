"""The gluon-robust command line: bad input fails cleanly, good input writes complete outputs."""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import cv2
import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo import get_model, model_store

from gluon_robust.cli import main, parse_fraction
from gluon_robust.data import load_data
from gluon_robust.errors import ModelError
from gluon_robust.reporting import MANIFEST_NAME

# Gluon warns about the .txt file of the "folder without images" case; the error is what is checked.
pytestmark = pytest.mark.filterwarnings("ignore:Ignoring .* of type .txt:UserWarning")


# ------------------------------------------------------------------ helpers
def visible_lines(text: str) -> List[str]:
    """The non-blank lines a terminal shows: a carriage return (a cleared progress bar) overwrites its line."""
    lines = (line.rsplit("\r", 1)[-1] for line in text.split("\n"))
    return [line for line in lines if line.strip()]


def snapshot(root: Path) -> Dict[str, bytes]:
    """Every file under ``root`` (hidden staging and temporary files included)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def base_args(out: Path, **overrides: str) -> List[str]:
    """``attack`` on the reference model and 4 bundled digits; overrides replace or add flags."""
    flags = {"--config": "mnist_resnet20", "--data": "mnist-sample", "--limit": "4", "--attack": "pgd",
             "--eps": "0.1", "--steps": "1", "--out": str(out)}
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if flag == "--model":
            flags.pop("--config")
        if value is None:
            flags.pop(flag)
        else:
            flags[flag] = value
    args = ["attack"]
    for flag, value in flags.items():
        args += [flag] if value == "" else [flag, value]
    return args


def save_npz(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    np.savez(path, x=x, y=y)
    return f"npz:{path}"


def r20_params(tmp_path: Path) -> str:
    net = get_model("cifar_resnet20_v1", classes=10)
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    path = tmp_path / "r20.params"
    net.save_parameters(str(path))
    return str(path)


def image_folder(tmp_path: Path, kind: str) -> str:
    root = tmp_path / f"folder_{kind}"
    root.mkdir()
    if kind == "no_images":
        (root / "cat").mkdir()
        (root / "cat" / "notes.txt").write_text("not an image")
    elif kind == "not_an_image":  # an ImageNet class name, so the 1,000-class model's table maps the folder
        (root / "tabby").mkdir()
        (root / "tabby" / "0001.jpg").write_text("this is text, not a JPEG")
    return f"folder:{root}"


FOLDER_MODEL = {"model": "mobilenet0.25", "input_size": "3,64,64"}  # small, fresh init, 3-channel input
RNG = np.random.RandomState(0)
LABELS = np.arange(6) % 10

# id -> (builder of the flag overrides given tmp_path, regex the one error line must match)
ERROR_CASES: Dict[str, tuple] = {
    "missing_params": (lambda t: {"params": str(t / "nope.params")}, r"params file not found: .*nope\.params"),
    "corrupt_params": (
        lambda t: (t / "junk.params").write_bytes(RNG.bytes(4096)) and {"params": str(t / "junk.params")},
        r"cannot read params file .*junk\.params: not a valid MXNet \.params file",
    ),
    "params_for_another_architecture": (
        lambda t: {"model": "cifar_resnet56_v1", "params": r20_params(t)},
        r"params file .*r20\.params does not fit the model",
    ),
    "wrong_number_of_classes": (lambda t: {"classes": "5"}, r"does not fit the model|5 classes"),
    "unknown_model": (
        lambda t: {"model": "resnet18_v3"}, r"unknown model 'resnet18_v3'; close matches: .*resnet18_v1",
    ),
    "unknown_config": (lambda t: {"config": "nope"}, r"config file not found: nope \(bundled configs: .*mnist_resnet20"),
    "wrong_image_size": (
        lambda t: {"data": save_npz(t / "c.npz", RNG.rand(6, 3, 32, 32).astype(np.float32), LABELS)},
        r"images are 32x32 but the input size is 28x28",
    ),
    "wrong_channels": (
        lambda t: {"data": save_npz(t / "c.npz", RNG.rand(6, 3, 28, 28).astype(np.float32), LABELS)},
        r"samples of shape \(3, 28, 28\) but the model expects \(1, 28, 28\)",
    ),
    "float_pixels_0_255": (
        lambda t: {"data": save_npz(t / "f.npz", (RNG.rand(6, 1, 28, 28) * 255).astype(np.float32), LABELS)},
        r"float images must lie in \[0, 1\].*divide by 255",
    ),
    "non_numeric_images": (
        lambda t: {"data": save_npz(t / "b.npz", RNG.rand(6, 1, 28, 28) > 0.5, LABELS)},
        r"non-numeric dtype bool",
    ),
    "float_labels": (
        lambda t: {"data": save_npz(t / "l.npz", RNG.rand(6, 1, 28, 28).astype(np.float32), LABELS + 0.5)},
        r"labels must be integers",
    ),
    "missing_npz": (lambda t: {"data": f"npz:{t / 'nope.npz'}"}, r"nope\.npz: file not found"),
    "empty_folder": (lambda t: dict(FOLDER_MODEL, data=image_folder(t, "empty")), r"no class sub-folders"),
    "folder_without_images": (
        lambda t: dict(FOLDER_MODEL, data=image_folder(t, "no_images")), r"hold no images with extension",
    ),
    "file_that_is_not_an_image": (  # fails mid-run, inside the staged output directory
        lambda t: dict(FOLDER_MODEL, data=image_folder(t, "not_an_image")), r"cannot decode image file .*0001\.jpg",
    ),
    "negative_eps": (lambda t: {"eps": "-0.1"}, r"eps must be .*0, got -0\.1"),
    "unknown_attack": (lambda t: {"attack": "pgdd"}, r"unknown attack 'pgdd' \(did you mean pgd\b.*\); valid names: .*pgd"),
    "zero_limit": (lambda t: {"limit": "0"}, r"--limit must be an integer >= 1, got 0"),
    "fractional_input_size": (lambda t: {"input_size": "1,28.5,28"}, r"input_size must be .*positive integers"),
    "pretrained_not_cached": (
        lambda t: {"model": "cifar_resnet20_v1", "pretrained": "", "data": "mnist-sample"},
        r"pretrained weights for 'cifar_resnet20_v1' are not cached .*cifar_resnet20_v1-{sha}\.params.*--params FILE",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_gives_one_error_line_and_exit_2(case, tmp_path, capfd, monkeypatch):
    # capfd, not capsys: also catches anything MXNet's C++ side writes straight to file descriptor 2.
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxnet_home"))  # nothing cached there
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("an earlier run")
    before = snapshot(out)
    build, pattern = ERROR_CASES[case]
    args = base_args(out, **build(tmp_path))
    pattern = pattern.replace("{sha}", model_store._model_sha1["cifar_resnet20_v1"][:8])
    capfd.readouterr()

    code = main(args)

    captured = capfd.readouterr()
    lines = visible_lines(captured.err)
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("gluon-robust: error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(out) == before  # nothing new, nothing half-written, no staging left


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["attack", "--config", "mnist_resnet20", "--data", "mnist-sample", "--attack", "pgd", "--eps", "abc",
          "--out", "OUT"], r"argument --eps: not a number or fraction: 'abc' \(see gluon-robust attack --help\)"),
        (["attack", "--config", "mnist_resnet20", "--data", "mnist-sample", "--out", "OUT"],
         r"the following arguments are required: --attack"),
        (["attack", "--model", "resnet18_v1", "--config", "mnist_resnet20", "--data", "mnist-sample", "--attack", "pgd",
          "--out", "OUT"], r"argument --config: not allowed with argument --model"),
        (["attak"], r"invalid choice: 'attak'"),
        ([], r"the following arguments are required: COMMAND \(see gluon-robust --help\)"),
    ],
    ids=["malformed_eps", "missing_attack", "model_and_config", "unknown_command", "no_command"],
)
def test_usage_errors_are_one_line_with_exit_2(args, pattern, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([str(out) if a == "OUT" else a for a in args])
    captured = capsys.readouterr()
    lines = visible_lines(captured.err)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("gluon-robust: error: "), captured.err
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()


def test_help_and_version_still_exit_0(capsys):
    for args in (["--help"], ["attack", "--help"], ["--version"]):
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 0
    assert "--eps" in capsys.readouterr().out


def test_bad_input_into_a_new_out_dir_writes_no_files(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    build, _ = ERROR_CASES["file_that_is_not_an_image"]
    assert main(base_args(out, **build(tmp_path))) == 2
    assert snapshot(out) == {}


def test_debug_lets_the_exception_propagate(tmp_path):
    with pytest.raises(ModelError, match="params file not found"):
        main(base_args(tmp_path / "out", params=str(tmp_path / "nope.params"), debug=""))


def test_unexpected_failure_is_one_line_with_exit_1(tmp_path, capsys, monkeypatch):
    # An --out that is a file is now refused up front (exit 2, see test_validation.py); a bug deep inside a job
    # is the unexpected failure left to show.
    import gluon_robust.jobs

    def broken_job(*args, **kwargs):
        raise RuntimeError("an internal failure\nwith a second line")

    monkeypatch.setattr(gluon_robust.jobs, "run_attack_job", broken_job)
    out = tmp_path / "out"
    code = main(base_args(out))
    lines = visible_lines(capsys.readouterr().err)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("gluon-robust: error: ") and "--debug" in lines[0]
    assert "RuntimeError: an internal failure" in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_evaluation_closes_its_progress_bar_when_a_batch_fails(monkeypatch):
    from tqdm import tqdm

    from gluon_robust.attacks import get_attack
    from gluon_robust.data import ArraySource
    from gluon_robust.errors import DataError
    from gluon_robust.evaluation.robustness import evaluate_attacks
    from gluon_robust.model import load_classifier

    source = ArraySource(RNG.rand(4, 1, 28, 28).astype(np.float32), np.arange(4))

    def unreadable(index):
        raise DataError("cannot decode image file")

    monkeypatch.setattr(source, "_load", unreadable)
    model, attacks = load_classifier("mnist_resnet20"), [("pgd", get_attack("pgd", eps=0.1, steps=1))]
    open_before = len(getattr(tqdm, "_instances", ()))
    try:
        evaluate_attacks(model, source, attacks)
    except DataError:  # where a caller (the CLI) reports the error: the bar must be gone by now
        assert len(getattr(tqdm, "_instances", ())) == open_before
    else:
        pytest.fail("evaluate_attacks did not raise the source's DataError")


def test_real_process_prints_only_the_error_on_stderr(tmp_path):
    """Outside pytest's log capture: log records must not add lines to a failing command's stderr."""
    data = save_npz(tmp_path / "c.npz", RNG.rand(6, 3, 32, 32).astype(np.float32), LABELS)
    out = tmp_path / "out"
    code = "import sys; from gluon_robust.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code] + base_args(out, data=data), capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = visible_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("gluon-robust: error: ") and "28x28" in lines[0], proc.stderr
    assert not out.exists()


def test_python_dash_m_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gluon_robust.cli", "list", "attacks"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pgd" in proc.stdout.split()


# ----------------------------------------------------------------- happy paths
def test_attack_writes_complete_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    eps = 0.1
    code = main(["attack", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "20", "--attack", "pgd",
                 "--eps", "0.1", "--steps", "5", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    printed = json.loads(captured.out)

    summary = json.loads((out / "summary.json").read_text())
    assert {k: summary[k] for k in printed} == printed
    assert summary["n"] == 20
    for key in ("clean_accuracy", "robust_accuracy", "success_rate"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["clean_accuracy"] >= 0.85  # the reference model on real digits
    assert summary["robust_accuracy"] <= summary["clean_accuracy"]
    assert summary["seconds"] > 0
    assert 0.0 < summary["max_perturbation"] <= eps + 1e-6
    assert summary["eps"] == pytest.approx(eps) and summary["norm"] == "linf"

    x, y = load_data("mnist-sample", split="test", limit=20).arrays()
    with np.load(out / "adversarial.npz") as npz:
        x_adv = npz["x_adv"]
        assert x_adv.shape == x.shape and x_adv.dtype == np.float32
        assert np.abs(x_adv - x).max() <= eps + 1e-6
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        np.testing.assert_array_equal(npz["y"], y)
        success = npz["success"]
    assert success.sum() == round(summary["success_rate"] * summary["attacked"])
    robust = summary["clean_accuracy"] - success.sum() / 20
    assert summary["robust_accuracy"] == pytest.approx(robust)

    with open(out / "per_sample.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20
    assert {"index", "label", "clean_prediction", "attacked", "adversarial_prediction", "success", "distance"} <= set(rows[0])
    assert [int(r["label"]) for r in rows] == y.tolist()
    assert sum(int(r["attacked"]) for r in rows) == summary["attacked"]

    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == 2 * summary["attacked"]
    assert len([p for p in pngs if p.name.endswith("_clean.png")]) == summary["attacked"]
    assert cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED).shape == (28, 28)
    assert [p.name for p in out.rglob(".*")] == [MANIFEST_NAME]  # no staging or temporary files left


def test_attack_eps_fraction(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["attack", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "4", "--attack", "pgd",
                 "--eps", "8/255", "--steps", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eps"] == pytest.approx(8 / 255)
    assert summary["attack"]["options"]["eps"] == pytest.approx(8 / 255)
    assert summary["max_perturbation"] <= 8 / 255 + 1e-6


@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("0.03", 0.03), ("1e-2", 0.01), (" 1/4 ", 0.25), ("-0.5", -0.5)])
def test_parse_fraction(text, value):
    assert parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "1/0", "", "8/", "0.1.2"])
def test_parse_fraction_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="not a number or fraction"):
        parse_fraction(text)


def test_demo_writes_a_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--config", "mnist_resnet20", "--eps", "0.1", "--limit", "20", "--workers", "1",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 20
    assert 0.85 <= report["clean_accuracy"] <= 1.0
    assert report["attacks"], "the demo ran no attack"
    for attack in report["attacks"]:
        assert {"name", "norm", "eps", "cumulative_robust_accuracy"} <= set(attack)
        assert attack["norm"] == "linf" and attack["eps"] == pytest.approx(0.1)
        assert 0.0 <= attack["cumulative_robust_accuracy"] <= report["clean_accuracy"]
    names = [a["name"] for a in report["attacks"]]
    assert names[:3] == ["pgd-40", "apgd-ce", "apgd-t"]
    assert "clean" in captured.out and "pgd-40" in captured.out and "apgd-ce" in captured.out
    assert {"report.json", "report.md", "report.html"} <= {p.name for p in out.iterdir()}
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [MANIFEST_NAME], "staging leftovers"


def test_demo_contrasts_the_standard_and_the_pgd_at_models(tmp_path, capsys):
    """The default demo evaluates both bundled models on the same digits; adversarial training shows at eps 0.3."""
    out = tmp_path / "demo"
    code = main(["demo", "--recipe", "apgd-lite", "--eps", "0.3", "--limit", "20", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    contrast = json.loads((out / "contrast.json").read_text())
    rows = {r["config"]: r for r in contrast["rows"]}
    assert set(rows) == {"mnist_resnet20", "mnist_resnet20_pgdat"}
    for config, row in rows.items():
        report = json.loads((out / config / "report.json").read_text())
        assert report["n"] == row["n"] == 20
        assert row["worst_case"]["0.3"] == pytest.approx(report["worst_case"][0]["robust_accuracy"])
        assert row["worst_case"]["0.3"] <= row["first_stage"]["0.3"] <= row["clean_accuracy"]
    assert rows["mnist_resnet20"]["worst_case"]["0.3"] <= 0.1
    assert rows["mnist_resnet20_pgdat"]["worst_case"]["0.3"] >= 0.6
    assert "contrast" in captured.out and "mnist_resnet20_pgdat" in (out / "contrast.md").read_text()


def test_demo_on_two_worker_processes_gives_the_same_figures_and_rows(tmp_path, capsys):
    """--workers 2 splits each model's digits into chunks on a local cluster; per-sample seeds make it invisible."""
    reports = {}
    for workers in ("1", "2"):
        out = tmp_path / f"demo{workers}"
        code = main(["demo", "--recipe", "apgd-lite", "--eps", "0.1", "--limit", "8", "--workers", workers,
                     "--out", str(out)])
        assert code == 0, capsys.readouterr().err
        reports[workers] = {c: json.loads((out / c / "report.json").read_text())
                            for c in ("mnist_resnet20", "mnist_resnet20_pgdat")}
    for config, single in reports["1"].items():
        split = reports["2"][config]
        assert "cluster" not in single and split["cluster"]["chunks"] == 4  # two chunks a worker, of 2 digits
        assert split["per_sample"] == single["per_sample"]
        assert split["worst_case"] == single["worst_case"] and split["clean_accuracy"] == single["clean_accuracy"]
    assert json.loads((tmp_path / "demo1" / "contrast.json").read_text()) == \
        json.loads((tmp_path / "demo2" / "contrast.json").read_text())


@pytest.mark.parametrize("value", ["0", "-2"])
def test_demo_refuses_a_bad_worker_count_before_any_work(value, tmp_path, capsys):
    code = main(["demo", "--workers", value, "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--workers" in err[0] and value in err[0]
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("what, expected", [("attacks", "pgd"), ("configs", "mnist_resnet20"), ("models", "cifar_resnet20_v1"),
                                            ("methods", "gaussian"), ("detectors", "magnet"),
                                            ("recipes", "standard")])
def test_list(what, expected, capsys):
    assert main(["list", what]) == 0
    assert expected in capsys.readouterr().out.split()


def test_black_box_attack_through_the_cli_respects_the_query_budget(tmp_path, capsys):
    out = tmp_path / "square"
    code = main(["attack", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "8", "--attack", "square",
                 "--eps", "0.3", "--max-queries", "50", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["max_perturbation"] <= 0.3 + 1e-6
    assert 1 <= summary["max_queries"] <= 50
    rows = (out / "per_sample.csv").read_text().splitlines()[1:]
    assert len(rows) == 8
    data = np.load(out / "adversarial.npz")
    assert data["x_adv"].min() >= 0.0 and data["x_adv"].max() <= 1.0

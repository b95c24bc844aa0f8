"""``gluon-robust detect``: one row per input, calibration recorded, saved state reused, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import List

import numpy as np
import pytest

from gluon_robust.cli import main
from gluon_robust.data import load_data


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    x, y = load_data("mnist-sample", split="test", limit=7).arrays()
    path = tmp_path_factory.mktemp("detect") / "tiny.npz"
    np.savez(path, x=x, y=y)
    return path


def detect_args(npz: Path, out: Path, *extra: str) -> List[str]:
    return ["detect", "--config", "mnist_resnet20", "--fit-limit", "200", "--data", f"npz:{npz}",
            "--out", str(out), *extra]


def test_detect_writes_one_row_per_input(tiny_npz: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(detect_args(tiny_npz, out, "--detector", "entropy", "--fpr", "0.1")) == 0
    with open(out / "detections.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["index"]) for r in rows] == list(range(7))
    report = json.loads((out / "detections.json").read_text())
    assert report["n"] == 7 and len(report["inputs"]) == 7 and report["target_fpr"] == 0.1
    threshold = report["threshold"]
    for row, item in zip(rows, report["inputs"]):
        assert float(row["score"]) == pytest.approx(item["score"])
        assert bool(int(row["flag"])) == (item["score"] > threshold) == item["flag"]
    calib = report["calibration"]
    assert calib["calibration_samples"] == 50  # a quarter of the 200 fitting digits held out
    assert abs(calib["calibration_fpr"] - 0.1) <= 1 / 50
    assert json.loads(capsys.readouterr().out)["n"] == 7


def test_detect_saves_and_reuses_fitted_state(tiny_npz: Path, tmp_path: Path) -> None:
    params = tmp_path / "maha.npz"
    args = ["--detector", "mahalanobis", "--detector-params", str(params)]
    assert main(detect_args(tiny_npz, tmp_path / "a", *args)) == 0
    assert params.is_file()
    stamp = params.stat().st_mtime_ns
    # The second run loads the state (no fitting data at all) and scores identically.
    assert main(detect_args(tiny_npz, tmp_path / "b", *args, "--fit-data", "npz:/nonexistent.npz")) == 0
    assert params.stat().st_mtime_ns == stamp
    first = json.loads((tmp_path / "a" / "detections.json").read_text())
    second = json.loads((tmp_path / "b" / "detections.json").read_text())
    assert first["threshold"] == second["threshold"]
    assert [r["score"] for r in first["inputs"]] == pytest.approx([r["score"] for r in second["inputs"]])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--detector", "nope"], "unknown detector 'nope'; valid names: binary, confidence"),
        (["--detector", "magnet:epochs=0"], "epochs must be an integer >= 1, got 0"),
        (["--detector", "entropy:foo=1"], "detector entropy does not take foo"),
        (["--detector", "entropy", "--fpr", "1.5"], "--fpr must be strictly between 0 and 1"),
    ],
)
def test_bad_detector_options_exit_2_with_one_line(tiny_npz: Path, tmp_path: Path, capsys, extra, message) -> None:
    assert main(detect_args(tiny_npz, tmp_path / "o", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def test_non_image_file_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not images")
    assert main(detect_args(text, tmp_path / "o", "--detector", "confidence")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an .npz archive" in err[0]
    assert not (tmp_path / "o").exists()


def test_params_file_of_another_detector_is_refused(tiny_npz: Path, tmp_path: Path, capsys) -> None:
    params = tmp_path / "maha.npz"
    assert main(detect_args(tiny_npz, tmp_path / "a", "--detector", "mahalanobis", "--detector-params", str(params))) == 0
    capsys.readouterr()
    assert main(detect_args(tiny_npz, tmp_path / "b", "--detector", "magnet", "--detector-params", str(params))) == 2
    assert "holds a mahalanobis detector, not magnet" in capsys.readouterr().err

"""``--defense`` and ``--gradient`` on the command line: reports name the gradient path; bad specs fail cleanly."""

from __future__ import annotations

import json
import re

import pytest

from gluon_robust.cli import main
from gluon_robust.evaluation.sanity import SanityWarning


def attack_args(out, *extra):
    return ["attack", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "6", "--attack", "pgd",
            "--eps", "0.1", "--steps", "3", "--max-images", "0", "--out", str(out), *extra]


def test_attack_with_bpda_writes_the_gradient_path(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(attack_args(out, "--defense", "jpeg:quality=75", "--gradient", "bpda")) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["defense"] == "jpeg:quality=75,bpda=smooth" and printed["gradient"] == "bpda (jpeg: bpda)"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["defense"]["gradient"] == "bpda"
    assert summary["defense"]["defenses"] == [{
        "name": "jpeg", "spec": "jpeg:quality=75,bpda=smooth", "declared": "bpda", "backward": "bpda", "randomized": False,
        "differentiable": False}]
    assert summary["defense"]["attack_eot_samples"] == 1
    assert "defence jpeg:quality=75,bpda=smooth" in summary["model"]


def test_attack_on_a_randomised_chain_uses_eot_unless_told_otherwise(tmp_path, capsys):
    assert main(attack_args(tmp_path / "a", "--defense", "noise:sigma=0.05", "--eot-samples", "3", "--limit", "2")) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["attack"]["options"]["eot_samples"] == 3 and summary["defense"]["attack_eot_samples"] == 3
    assert main(attack_args(tmp_path / "b", "--defense", "noise:sigma=0.05", "--limit", "2",
                            "--attack-option", "eot_samples=2")) == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["defense"]["attack_eot_samples"] == 2


@pytest.mark.parametrize("extra,pattern", [
    (["--defense", "jpeg:quality=500"], r"defense jpeg: quality must be an integer in 1\.\.100, got 500"),
    (["--defense", "blurr"], r"unknown defense 'blurr' \(did you mean spatial\?\); valid names: bitdepth, jpeg"),
    (["--gradient", "bpda"], "--gradient and --eot-samples need --defense"),
    (["--defense", "jpeg", "--gradient", "exact"], "argument --gradient: invalid choice: 'exact'"),
])
def test_bad_defense_input_is_one_line_and_exit_2(extra, pattern, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(attack_args(out, *extra)) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gluon-robust: error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert captured.out == "" and not out.exists()


def test_evaluate_naive_reports_the_path_and_warns_of_masking(tmp_path, capsys):
    out = tmp_path / "eval"
    with pytest.warns(SanityWarning) as caught:
        code = main(["evaluate", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "8",
                     "--attacks", "fgsm", "--eps", "0.1", "--defense", "bitdepth:bits=3", "--gradient", "naive",
                     "--no-progress", "--out", str(out)])
    assert code == 0
    assert "defence bitdepth:bits=3, gradient naive (bitdepth: zero)" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["defense"]["defenses"][0]["backward"] == "zero"
    assert report["sanity"]["zero_gradient_fraction"] == 1.0
    assert any("zero or NaN input gradient" in w for w in report["warnings"])
    messages = [str(w.message) for w in caught]
    assert any("zero or NaN input gradient" in m for m in messages)
    assert "gradient path: naive: bitdepth: zero (declared bpda)" in (out / "report.md").read_text()


def test_list_defenses(capsys):
    assert main(["list", "defenses"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert "jpeg: gradient bpda" in lines and "spatial: gradient exact" in lines and "noise: gradient eot" in lines

"""Epsilon in the user's units: ``8/255`` parses, ``--eps 8`` on a [0, 1] model is refused with a hint, everywhere.

The oracle of every check is the model's input range: an L-inf budget above
``high - low`` lets every pixel take any value, so it is a unit mistake (``8``
meant as ``8/255``); on a ``[0, 255]`` model the same ``8`` is a sensible budget.
"""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest

from gluon_robust.attacks import FGSM, get_attack, make_attack
from gluon_robust.cli import main, parse_fraction
from gluon_robust.data import ArraySource
from gluon_robust.errors import ConfigError
from gluon_robust.evaluation import evaluate
from gluon_robust.jobs import run_attack_job
from gluon_robust.model import Classifier
from gluon_robust.training import get_method, make_method
from gluon_robust.training.loop import train_adversarial
from gluon_robust.validation import InvalidValue, MissingValue, check_eps

from conftest import tiny_bn_net

ROOT = Path(__file__).resolve().parents[1]
HINT = "did you mean 8/255 = 0.0314?"


def visible_lines(text: str) -> List[str]:
    """The non-blank lines a terminal shows (a carriage return overwrites its line)."""
    lines = (line.rsplit("\r", 1)[-1] for line in text.split("\n"))
    return [line for line in lines if line.strip()]


def attack_args(out: Path, *extra: str) -> List[str]:
    """``attack`` on the bundled reference model and two bundled digits."""
    return ["attack", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "2", "--out", str(out), *extra]


def tiny_source(n: int = 8) -> ArraySource:
    rng = np.random.RandomState(0)
    return ArraySource(rng.rand(n, 1, 8, 8).astype(np.float32), rng.randint(0, 10, n), name="tiny")


# ------------------------------------------------------------------ parsing
def test_fraction_parses_to_the_exact_quotient():
    assert parse_fraction("8/255") == 8 / 255
    assert f"{parse_fraction('8/255'):.7f}" == "0.0313725"
    assert parse_fraction(" 2/255 ") == 2 / 255
    assert parse_fraction("0.5") == 0.5


# ------------------------------------------------------------------ check_eps
def test_linf_eps_is_bounded_by_the_width_of_the_input_range():
    assert check_eps("eps", 1.0, "linf", (0.0, 1.0)) == 1.0  # the whole range: allowed
    assert check_eps("eps", 0.0, "linf", (0.0, 1.0)) == 0.0
    assert check_eps("eps", None, "linf", (0.0, 1.0)) is None  # minimal-perturbation attacks have no budget
    assert check_eps("eps", 2.0, "linf", (-1.0, 1.0)) == 2.0  # width 2
    assert check_eps("eps", 8, "inf", (0.0, 255.0)) == 8.0  # [0, 255] pixels: 8 is 8 grey levels
    with pytest.raises(InvalidValue, match=re.escape("eps must be at most 1 for the linf norm")) as info:
        check_eps("eps", 8, "linf", (0.0, 1.0))
    assert str(info.value).endswith(HINT)
    with pytest.raises(InvalidValue, match=r"at most 2 .*\[-1, 1\].*got 2\.5; did you mean 2\.5/255 = 0\.0098\?"):
        check_eps("eps", 2.5, "linf", (-1.0, 1.0))
    with pytest.raises(InvalidValue, match=r"at most 0\.001 .*got 1$"):  # 1/255 would not fit either: no hint
        check_eps("eps", 1, "linf", (0.0, 0.001))
    with pytest.raises(InvalidValue, match=r"eps must be >= 0, got -0\.1"):
        check_eps("eps", -0.1, "linf", (0.0, 1.0))
    with pytest.raises(InvalidValue, match=r"eps must be a finite number, got nan"):
        check_eps("eps", math.nan, "linf", (0.0, 1.0))


def test_l2_and_l1_budgets_above_the_box_diameter_warn(caplog):
    shape = (3, 4, 4)  # d = 48 values in [0, 1]: L2 diameter sqrt(48) = 6.93, L1 diameter 48
    with caplog.at_level(logging.WARNING, logger="gluon_robust"):
        assert check_eps("eps", 6.9, "l2", (0.0, 1.0), shape) == 6.9
        assert check_eps("eps", 47.0, "l1", (0.0, 1.0), shape) == 47.0
        assert check_eps("eps", 500.0, "l2", (0.0, 1.0)) == 500.0  # shape unknown: no diameter to compare with
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="gluon_robust"):
        assert check_eps("eps", 7.0, "l2", (0.0, 1.0), shape) == 7.0
        assert check_eps("eps", 49.0, "l1", (0.0, 1.0), shape) == 49.0
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all("can never bind" in m for m in messages), messages
    assert "6.928" in messages[0] and " 48," in messages[1]


# ------------------------------------------------------------------ the command line
def test_eps_8_is_refused_with_the_hint_by_the_real_cli(tmp_path):
    out = tmp_path / "out"
    args = attack_args(out, "--attack", "fgsm", "--eps", "8")
    proc = subprocess.run([sys.executable, "-m", "gluon_robust.cli"] + args, capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    lines = visible_lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert lines == [f"gluon-robust: error: --eps must be at most 1 for the linf norm (the width of the model's input "
                     f"range [0, 1]), got 8.0; {HINT}"], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


def run_cli(args: List[str], capfd) -> List[str]:
    code = main(args)
    captured = capfd.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    lines = visible_lines(captured.err)
    assert len(lines) == 1 and lines[0].startswith("gluon-robust: error: "), captured.err
    return lines


def test_one_bad_value_in_an_eps_list_is_named(tmp_path, capfd):
    out = tmp_path / "out"
    args = ["evaluate", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "2", "--attacks", "fgsm",
            "--eps", "0.1,8/255,2", "--out", str(out)]
    (line,) = run_cli(args, capfd)
    assert line.endswith("--eps must be at most 1 for the linf norm (the width of the model's input range [0, 1]), "
                         "got 2.0; did you mean 2/255 = 0.0078?"), line
    assert not out.exists()


def test_train_eps_and_val_eps_are_checked(tmp_path, capfd):
    base = ["train", "--model", "cifar_resnet20_v1", "--data", "mnist-sample", "--limit", "8", "--epochs", "1",
            "--save-dir", str(tmp_path / "run")]
    (line,) = run_cli(base + ["--eps", "8"], capfd)
    assert "--eps must be at most 1" in line and line.endswith(HINT), line
    (line,) = run_cli(base + ["--eps", "8/255", "--val-eps", "16"], capfd)
    assert "--val-eps must be at most 1" in line and line.endswith("did you mean 16/255 = 0.0627?"), line
    assert not (tmp_path / "run").exists()


def test_missing_eps_is_one_line_naming_the_flag(tmp_path, capfd):
    (line,) = run_cli(attack_args(tmp_path / "out", "--attack", "pgd"), capfd)
    assert line == "gluon-robust: error: --eps is required by attack pgd, which has no default for it"


def test_missing_hyperparameters_through_the_registry_are_config_errors():
    with pytest.raises(MissingValue, match="^eps is required by attack pgd, which has no default for it$"):
        get_attack("pgd")  # was a raw TypeError from the constructor
    with pytest.raises(MissingValue, match="^eps is required by attack apgd"):
        make_attack("apgd-ce", {"steps": 3})
    with pytest.raises(ConfigError, match="^eps is required by training method pgd-at"):
        get_method("pgd-at")
    with pytest.raises(MissingValue, match="^eps is required by training method trades"):
        make_method("trades", {"steps": 2})
    assert get_attack("deepfool").eps is None  # minimal-perturbation attacks need no eps


def test_a_0_255_model_accepts_eps_8(tmp_path, capfd):
    out = tmp_path / "out"
    code = main(attack_args(out, "--attack", "fgsm", "--eps", "8", "--bounds", "0,255", "--batch-size", "2"))
    captured = capfd.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eps"] == 8.0 and summary["attacked"] >= 1
    assert 0 < summary["max_perturbation"] <= 8.0 + 1e-4


# ------------------------------------------------------------------ the Python API
def test_python_api_refuses_eps_8_before_any_work(tmp_path):
    model = Classifier(tiny_bn_net(), num_classes=10, input_size=(1, 8, 8))
    out = tmp_path / "out"
    with pytest.raises(InvalidValue, match=re.escape(HINT)):
        run_attack_job(model, tiny_source(), FGSM(eps=8), attack_name="fgsm", out_dir=out)
    with pytest.raises(InvalidValue, match=r"got 8\.0; did you mean"):
        evaluate(model, tiny_source(), attacks=["fgsm"], eps=[0.1, 8], out_dir=out, progress=False)
    assert not out.exists()
    with pytest.raises(InvalidValue, match=r"^eps must be at most 1 .*got 8\.0; did you mean"):
        train_adversarial(model, get_method("pgd-at", eps=8.0, steps=1), tiny_source(), epochs=1, batch_size=4)
    with pytest.raises(InvalidValue, match=r"^val_eps must be at most 1 .*got 3"):
        train_adversarial(model, get_method("pgd-at", eps=0.1, steps=1), tiny_source(), epochs=1, batch_size=4,
                          val=tiny_source(4), val_eps=3)

"""``--seed`` controls every random choice of every command.

For each command that draws random numbers, two runs with the same seed
write bit-identical outputs and a run with another seed writes different
ones. Timing fields are the only thing left out of the comparison.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest

from gluon_robust.cli import main

MODEL = ["--config", "mnist_resnet20", "--data", "mnist-sample"]


def _arrays(path: Path) -> Dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _json(path: Path, drop: tuple = ("seconds", "train_seconds", "validation_seconds", "started", "args",
                                      "command", "save_dir", "outputs", "config")) -> object:
    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in drop}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(json.loads(path.read_text()))


def _same(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return a == b


# command name -> (arguments for an output directory, what to read back from it)
CASES: Dict[str, tuple] = {
    "attack": (lambda out: ["attack", *MODEL, "--limit", "6", "--attack", "pgd", "--eps", "0.1", "--steps", "2",
                            "--out", str(out)],
               lambda out: _arrays(out / "adversarial.npz")),
    "attack-targeted-random": (
        lambda out: ["attack", *MODEL, "--limit", "6", "--attack", "fgsm", "--eps", "0.2", "--targeted",
                     "--out", str(out)],
        lambda out: _arrays(out / "adversarial.npz")),
    "evaluate": (lambda out: ["evaluate", *MODEL, "--limit", "6", "--attacks", "apgd", "--eps", "0.1",
                              "--no-progress", "--out", str(out)],
                 lambda out: _arrays(out / "examples.npz")),
    "certify": (lambda out: ["certify", *MODEL, "--limit", "3", "--n0", "20", "--n", "50", "--sigma", "0.5",
                             "--no-progress", "--out", str(out)],
                lambda out: _json(out / "certify.json")),
    "detect": (lambda out: ["detect", "--config", "mnist_resnet20", "--detector", "confidence", "--fit-data",
                            "mnist-sample", "--fit-limit", "40", "--data", "mnist-sample", "--limit", "8",
                            "--out", str(out)],
               lambda out: _json(out / "detections.json")),
    "train": (lambda out: ["train", *MODEL, "--limit", "32", "--batch-size", "16", "--epochs", "1", "--steps", "1",
                           "--val-limit", "0", "--no-progress", "--save-dir", str(out), "--name", "m"],
              lambda out: (out / "m.params").read_bytes()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_seed_same_output_other_seed_other_output(case: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    build: Callable[[Path], List[str]]
    build, read = CASES[case]
    outputs = []
    for run, seed in enumerate((1, 1, 2)):
        out = tmp_path / f"run{run}"
        assert main(build(out) + ["--seed", str(seed)]) == 0, capsys.readouterr().err
        outputs.append(read(out))
    capsys.readouterr()
    assert _same(outputs[0], outputs[1]), f"{case}: the same seed gave different outputs"
    assert not _same(outputs[0], outputs[2]), f"{case}: --seed 2 gave the output of --seed 1"


def test_attack_seed_reaches_the_attack_and_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["attack", *MODEL, "--limit", "4", "--attack", "pgd", "--eps", "0.1", "--steps", "2"]
    assert main(base + ["--out", str(tmp_path / "a"), "--seed", "7"]) == 0
    via_option = base + ["--out", str(tmp_path / "b"), "--attack-option", "seed=7"]
    assert main(via_option) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["seed"] == 7 and summary["attack"]["options"]["seed"] == 7
    assert _same(_arrays(tmp_path / "a" / "adversarial.npz"), _arrays(tmp_path / "b" / "adversarial.npz"))
    capsys.readouterr()
    assert main(via_option + ["--seed", "8"]) == 2
    assert "--seed 8 and --attack-option seed=7 differ" in capsys.readouterr().err

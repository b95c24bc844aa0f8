"""The complete loop: exact resume, context lists, checkpoints, the guard in a run, the train command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from gluon_robust.cli import main
from gluon_robust.data import ArraySource, load_data
from gluon_robust.errors import ConfigError
from gluon_robust.model import load_classifier
from gluon_robust.training import Curriculum, FastAT, FreeAT, OverfittingGuard, PGDAT, TRADES
from gluon_robust.training import loop as loop_module
from gluon_robust.training.checkpoint import CheckpointManager, structural_params
from gluon_robust.commands.train import run_training
from gluon_robust.training.loop import TrainConfig, train_adversarial
from training_helpers import tiny_data, training_model

X, Y = tiny_data(40, seed=3)
TRAIN = ArraySource(X, Y, name="tiny-train")
VAL = ArraySource(*tiny_data(12, seed=4), name="tiny-val")


class Crash(Exception):
    pass


def _weights(model):
    return {k: p.data(p.list_ctx()[0]).asnumpy() for k, p in structural_params(model.net).items()}


def _fit(model, method, tmp, **options):
    settings = dict(epochs=3, batch_size=8, lr=0.01, seed=7, checkpoint_dir=tmp, progress=False, val=VAL, val_eps=0.1,
                    val_steps=2)
    settings.update(options)
    return train_adversarial(model, method, TRAIN, **settings)


@pytest.mark.parametrize("make", [
    lambda: PGDAT(eps=0.1, steps=2, seed=1),
    lambda: FreeAT(eps=0.1, replays=2),
], ids=["pgd-at", "free-at"])
def test_resume_after_a_failure_mid_epoch_ends_with_the_same_weights(tmp_path, make):
    schedule = Curriculum(eps=0.1, steps=2, warmup_epochs=1.5)
    reference = training_model()
    full = _fit(reference, make(), tmp_path / "a", curriculum=schedule, checkpoint_every=2)

    def crash(epoch, step, global_step):
        if global_step == 9:  # epoch 2, step 4 of 5; the last checkpoint was at global step 8
            raise Crash

    with pytest.raises(Crash):
        _fit(training_model(), make(), tmp_path / "b", curriculum=schedule, checkpoint_every=2, on_step=crash)
    assert CheckpointManager(tmp_path / "b").load().state["global_step"] == 8
    resumed_model = training_model(seed=5)  # other initial weights: everything must come from the checkpoint
    resumed = _fit(resumed_model, make(), tmp_path / "b", curriculum=schedule, checkpoint_every=2, resume=True)
    assert resumed.resumed_from == 8
    expected, got = _weights(reference), _weights(resumed_model)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert [e["pgd_accuracy"] for e in resumed.epochs] == [e["pgd_accuracy"] for e in full.epochs]
    assert [round(e["train_loss"], 5) for e in resumed.epochs] == [round(e["train_loss"], 5) for e in full.epochs]


def test_context_list_equals_one_context():
    """Two CPU contexts with split_and_load train the same weights as one (a network without BatchNorm)."""
    ctx = [mx.cpu(0), mx.cpu(1)]
    single, double = training_model(bn=False), training_model(bn=False, ctx=ctx)
    options = dict(epochs=2, batch_size=8, lr=0.01, seed=2, progress=False)
    train_adversarial(single, TRADES(eps=0.1, steps=2, seed=3), TRAIN, **options)
    train_adversarial(double, TRADES(eps=0.1, steps=2, seed=3), TRAIN, ctx=ctx, **options)
    expected = _weights(single)
    # Summing the two shards' gradients reorders float32 additions, and the attack's sign steps can flip
    # where a pixel's gradient is near zero: ~5e-5 apart after 2 epochs. A wrongly scaled or dropped shard
    # moves the weights by ~lr * grad, about 1e-2.
    for key, value in _weights(double).items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-4, atol=2e-4, err_msg=key)
        np.testing.assert_array_equal(structural_params(double.net)[key].data(mx.cpu(1)).asnumpy(), value)


def test_checkpoints_are_single_complete_generations(tmp_path):
    manager = CheckpointManager(tmp_path)
    assert manager.load() is None
    (tmp_path / "ckpt-000042.params").write_bytes(b"half-written by a killed run")
    model = training_model()
    _fit(model, PGDAT(eps=0.1, steps=1), tmp_path, epochs=1, checkpoint_every=2, val=None, val_eps=None)
    files = sorted(p.name for p in tmp_path.iterdir())
    generation = manager.latest_generation()
    stem = f"ckpt-{generation:06d}"
    assert files == [f"{stem}.json", f"{stem}.manifest.json", f"{stem}.npz", f"{stem}.optimizer", f"{stem}.params",
                     "latest.json"]  # the orphan of the "killed run" is gone, no temporary file is left
    state = manager.load().state
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 0, 5)


def test_resume_refuses_other_options(tmp_path):
    model = training_model()
    _fit(model, PGDAT(eps=0.1, steps=1), tmp_path, epochs=1, val=None, val_eps=None, fingerprint={"eps": 0.1, "epochs": 1})
    _fit(model, PGDAT(eps=0.1, steps=1), tmp_path, epochs=2, val=None, val_eps=None, resume=True,
         fingerprint={"eps": 0.1, "epochs": 2})  # more epochs: fine
    with pytest.raises(ConfigError, match=r"cannot resume.*eps: 0.1 -> 0.3"):
        _fit(model, PGDAT(eps=0.3, steps=1), tmp_path, epochs=3, val=None, val_eps=None, resume=True,
             fingerprint={"eps": 0.3, "epochs": 3})


def test_guard_stops_the_run_and_rolls_back(monkeypatch, tmp_path):
    """A fake PGD accuracy sequence with a collapse after the third epoch."""
    accuracies = iter([0.40, 0.55, 0.02, 0.6])
    monkeypatch.setattr(loop_module, "_validate", lambda *a, **k: {"clean_accuracy": 0.9, "pgd_accuracy": next(accuracies)})
    snapshots = []
    model = training_model()
    run = _fit(model, FastAT(eps=0.1), tmp_path, epochs=4, guard=OverfittingGuard(max_drop=0.2),
               on_epoch=lambda r: snapshots.append(_weights(model)))
    assert [e["guard"] for e in run.epochs] == ["best", "best", "collapse"]
    assert run.stopped_early.startswith("catastrophic overfitting after epoch 3")
    assert run.epochs[-1]["rolled_back_to_epoch"] == 2
    for key, value in _weights(model).items():
        np.testing.assert_array_equal(value, snapshots[1][key])
    with pytest.raises(ConfigError, match="guard needs validation data"):
        _fit(training_model(), FastAT(eps=0.1), tmp_path, val=None, guard=OverfittingGuard())


def test_train_command_writes_loadable_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--config", "mnist_resnet20", "--method", "fast-at", "--eps", "0.1", "--epochs", "1",
                 "--limit", "32", "--val-limit", "16", "--batch-size", "16", "--save-dir", str(out), "--no-progress",
                 "--bn-stats", "clean"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and metrics["config"]["method"] == "fast-at" and len(metrics["epochs"]) == 1
    assert {"clean_accuracy", "pgd_accuracy", "train_loss", "seconds", "guard"} <= set(metrics["epochs"][0])
    config = Path(summary["outputs"]["config"])
    assert config == out / "mnist_resnet20_fast-at.yaml"
    model = load_classifier(str(config))
    x, y = load_data("mnist-sample", split="test", limit=16).arrays()
    accuracy = float((model.predict(x).argmax(axis=1) == y).mean())
    assert accuracy == pytest.approx(metrics["epochs"][0]["clean_accuracy"])


def test_train_command_bad_input_is_one_line(tmp_path, capsys):
    args = ["train", "--config", "mnist_resnet20", "--save-dir", str(tmp_path), "--limit", "8"]
    assert main(args + ["--method", "trades", "--replays", "4"]) == 2
    assert "method trades does not take replays" in capsys.readouterr().err
    assert main(args + ["--method", "distill"]) == 2
    assert "needs a teacher" in capsys.readouterr().err
    assert main(args + ["--method", "pgd-att"]) == 2
    assert "unknown training method 'pgd-att' (did you mean pgd-at" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="exactly one of model"):
        TrainConfig()


def test_killed_subprocess_resumes_to_the_same_weights(tmp_path):
    """SIGKILL a real `gluon-robust train` after its second checkpoint; --resume ends where an uninterrupted run ends."""
    flags = ["--config", "mnist_resnet20", "--method", "pgd-at", "--eps", "0.1", "--steps", "2", "--epochs", "2",
             "--limit", "96", "--val-limit", "16", "--batch-size", "16", "--checkpoint-every", "1", "--no-progress"]
    run_training_args = lambda out: ["train"] + flags + ["--save-dir", str(out)]  # noqa: E731
    assert main(run_training_args(tmp_path / "full")) == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "gluon_robust.cli"] + run_training_args(killed),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            generation = CheckpointManager(killed / "checkpoint").latest_generation() if (killed / "checkpoint").exists() else None
            if generation is not None and generation >= 1:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    state = CheckpointManager(killed / "checkpoint").load().state
    assert state["global_step"] < 12  # killed mid-run
    assert main(run_training_args(killed) + ["--resume"]) == 0
    expected = mx.nd.load(str(tmp_path / "full" / "mnist_resnet20_pgd-at.params"))
    got = mx.nd.load(str(killed / "mnist_resnet20_pgd-at.params"))
    for key in expected:
        np.testing.assert_array_equal(got[key].asnumpy(), expected[key].asnumpy(), err_msg=key)


@pytest.mark.slow
def test_guard_catches_real_catastrophic_overfitting(tmp_path):
    """FGSM training without random start and with a large step overfits to FGSM; the guard stops it.

    This configuration, on 2 CPU cores in about 3 minutes, gave PGD-10 accuracies (200 held-out digits,
    eps 0.3) of 12.5, 7, 0, 13.5, 53.5 and then 19% after epoch 6, where the guard rolled back to epoch 5.
    """
    cfg = TrainConfig(model="cifar_resnet20_v1", method="fast-at", eps=0.3, step_size=0.6, no_random_start=True,
                      epochs=8, lr=2e-3, batch_size=64, limit=2000, val_limit=200, val_steps=10, guard=True,
                      guard_drop=0.2, on_collapse="rollback", save_dir=str(tmp_path), progress=False)
    metrics = run_training(cfg)
    pgd = [e["pgd_accuracy"] for e in metrics["epochs"]]
    assert metrics["stopped_early"], pgd
    assert max(pgd) - pgd[-1] > 0.2


def test_train_command_passes_sigma_to_gaussian_augmentation(tmp_path, capsys):
    """--sigma reaches the gaussian method (recorded in the metrics); methods without sigma refuse it."""
    out = tmp_path / "noise"
    code = main(["train", "--config", "mnist_resnet20", "--method", "gaussian", "--sigma", "0.5", "--epochs", "1",
                 "--limit", "16", "--val-limit", "0", "--batch-size", "16", "--save-dir", str(out), "--no-progress"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["sigma"] == 0.5 and metrics["config"]["method"] == "gaussian"
    capsys.readouterr()
    assert main(["train", "--config", "mnist_resnet20", "--method", "pgd-at", "--sigma", "0.5", "--limit", "8",
                 "--save-dir", str(tmp_path / "x")]) == 2
    assert "method pgd-at does not take sigma" in capsys.readouterr().err

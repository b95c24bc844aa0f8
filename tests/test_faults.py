"""Faults lose nothing: killed runs' staging, reused output directories, diverging training, SIGINT and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import mxnet as mx
import numpy as np
import pytest

from gluon_robust.cli import main
from gluon_robust.data import ArraySource
from gluon_robust.errors import TrainingDiverged
from gluon_robust.evaluation.report import comparable
from gluon_robust.evaluation.state import STATE_NAME
from gluon_robust.interrupts import Interrupted, deferred, handle_signals
from gluon_robust.reporting import MANIFEST_NAME, recorded_outputs, staged_output
from gluon_robust.training import PGDAT
from gluon_robust.training.checkpoint import CheckpointManager, structural_params
from gluon_robust.commands.train import run_training
from gluon_robust.training.loop import TrainConfig, train_adversarial
from training_helpers import tiny_data, training_model

CLI = [sys.executable, "-m", "gluon_robust.cli"]
ATTACK = ["attack", "--config", "mnist_resnet20", "--data", "mnist-sample", "--attack", "pgd", "--eps", "0.1"]
TRAIN_BASE = ["train", "--config", "mnist_resnet20", "--method", "pgd-at", "--eps", "0.1", "--steps", "1",
              "--no-progress"]
TRAIN = TRAIN_BASE + ["--epochs", "2", "--limit", "64", "--val-limit", "16", "--batch-size", "16"]
EVALUATE_BASE = ["evaluate", "--config", "mnist_resnet20", "--data", "mnist-sample", "--attacks", "pgd", "--eps", "0.1",
                 "--no-progress"]
EVALUATE = EVALUATE_BASE + ["--limit", "12", "--batch-size", "4"]  # three batches of about half a second


def files(root: Path) -> Dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stderr_lines(text: str) -> List[str]:
    return [line for line in text.splitlines() if line.strip()]


def start(args: List[str]) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120.0) -> None:
    """Wait until ``ready()``; fail if the process ends first."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (status {proc.returncode}) before it got there: {proc.stderr.read()}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("the command made no progress in time")
        time.sleep(0.02)


def stop(proc: subprocess.Popen, sig: int) -> str:
    """Send ``sig``, wait for the process and return its stderr."""
    os.kill(proc.pid, sig)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err


def staging(out: Path) -> List[Path]:
    return sorted(out.glob(".staging-*"))


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------ staging of killed runs
def test_only_staging_of_dead_processes_on_this_host_is_removed(tmp_path):
    out = tmp_path / "out"
    host = socket.gethostname()
    dead = out / f".staging-{host}.{dead_pid()}.abc123"
    alive = out / f".staging-{host}.{os.getpid()}.def456"  # a concurrent run: its process is alive
    remote = out / f".staging-elsewhere.example.{dead_pid()}.ghi789"  # another host's: its processes are unknown here
    foreign = out / ".staging-notours"
    for d in (dead, alive, remote, foreign):
        d.mkdir(parents=True)
        (d / "part.npz").write_bytes(b"partial")
    with staged_output(out) as stage:
        assert stage.name.startswith(f".staging-{host}.{os.getpid()}.")
        (stage / "summary.json").write_text("{}")
    assert not dead.exists()
    assert alive.is_dir() and remote.is_dir() and foreign.is_dir()
    assert (out / "summary.json").read_text() == "{}"


def test_a_killed_attack_leaves_staging_that_the_next_run_removes(tmp_path):
    out = tmp_path / "out"
    proc = start(ATTACK + ["--limit", "32", "--steps", "200", "--out", str(out)])
    try:
        wait_for(proc, lambda: bool(staging(out)))
    finally:
        stop(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    leftover = staging(out)
    assert len(leftover) == 1 and str(proc.pid) in leftover[0].name
    assert not (out / "summary.json").exists()
    assert main(ATTACK + ["--limit", "4", "--steps", "1", "--out", str(out)]) == 0
    assert staging(out) == []
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST_NAME, "adversarial.npz", "images", "per_sample.csv", "summary.json"])


# ------------------------------------------------------------------ reused output directories
def test_a_reused_out_holds_exactly_the_new_runs_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's file")
    assert main(ATTACK + ["--limit", "4", "--steps", "1", "--out", str(out)]) == 0
    assert recorded_outputs(out) == ["adversarial.npz", "images", "per_sample.csv", "summary.json"]
    assert main(EVALUATE_BASE + ["--limit", "4", "--batch-size", "4", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST_NAME, "notes.txt", "examples.npz", "report.html", "report.json", "report.md"])
    assert main(["certify", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "2", "--n0", "8",
                 "--n", "16", "--no-progress", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_NAME, "notes.txt", "certify.json"])
    assert (out / "notes.txt").read_text() == "the user's file"
    capsys.readouterr()


def test_a_reused_save_dir_holds_exactly_the_new_training_outputs(tmp_path):
    save = tmp_path / "save"
    save.mkdir()
    (save / "notes.txt").write_text("the user's file")
    options = dict(config="mnist_resnet20", method="pgd-at", eps=0.1, steps=1, epochs=1, limit=16, val_limit=0,
                   batch_size=16, save_dir=str(save), progress=False)
    run_training(TrainConfig(name="first", **options))
    assert (save / "first.params").is_file()
    run_training(TrainConfig(name="second", **options))
    assert sorted(p.name for p in save.iterdir()) == sorted(
        [MANIFEST_NAME, "notes.txt", "checkpoint", "metrics.json", "second.params", "second.yaml"])


# ------------------------------------------------------------------ diverging training
X, Y = tiny_data(40, seed=3)
TINY = ArraySource(X, Y, name="tiny-train")


def _poison(model, suffix: str, value: float, at_step: int) -> Callable[[int, int, int], None]:
    """An ``on_step`` hook that writes ``value`` into the parameter ending in ``suffix`` after global step ``at_step``."""
    param = next(p for name, p in structural_params(model.net).items() if name.endswith(suffix))

    def hook(epoch: int, step: int, global_step: int) -> None:
        if global_step == at_step:
            for c in param.list_ctx():
                data = param.data(c).asnumpy()
                data.flat[0] = value
                param.data(c)[:] = mx.nd.array(data, ctx=c)

    return hook


def _finite_checkpoint(directory: Path) -> Dict:
    checkpoint = CheckpointManager(directory).load()
    assert checkpoint is not None
    for name, value in mx.nd.load(str(checkpoint.params)).items():
        assert np.isfinite(value.asnumpy()).all(), name
    return checkpoint.state


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    model = training_model()
    # An infinite output bias makes the next loss infinite (MXNet's softmax cross-entropy turns a NaN logit into a
    # finite loss, which the check of the parameters before each checkpoint catches; see the next test).
    hook = _poison(model, "7.bias", float("inf"), at_step=3)
    with pytest.raises(TrainingDiverged) as info:
        train_adversarial(model, PGDAT(eps=0.1, steps=1, seed=1), TINY, epochs=2, batch_size=8, lr=0.01,
                          checkpoint_dir=tmp_path, checkpoint_every=2, progress=False, on_step=hook)
    message = str(info.value)
    assert "\n" not in message
    assert "the loss became inf at epoch 1, step 4 (global step 4)" in message
    assert f"the checkpoint of epoch 1, step 2 is kept in {tmp_path}" in message and "lower --lr" in message
    state = _finite_checkpoint(tmp_path)
    assert (state["epoch"], state["step"], state["global_step"]) == (0, 2, 2)


def test_non_finite_parameters_are_never_checkpointed(tmp_path):
    model = training_model()
    # A running mean does not enter the training loss (batch statistics do): only the check before saving sees it.
    hook = _poison(model, "running_mean", float("inf"), at_step=1)
    with pytest.raises(TrainingDiverged, match=r"running_mean became NaN or infinite by the end of epoch 1; they were "
                                               r"not saved and no checkpoint of this run was written"):
        train_adversarial(model, PGDAT(eps=0.1, steps=1, seed=1), TINY, epochs=2, batch_size=8, lr=0.01,
                          checkpoint_dir=tmp_path, progress=False, on_step=hook)
    assert CheckpointManager(tmp_path).latest_generation() is None


def test_train_with_a_huge_learning_rate_fails_with_one_line(tmp_path, capfd):
    save = tmp_path / "save"
    code = main(TRAIN_BASE + ["--epochs", "1", "--limit", "64", "--val-limit", "0", "--batch-size", "16",
                              "--optimizer", "sgd", "--lr", "1e10", "--checkpoint-every", "1", "--save-dir", str(save)])
    lines = stderr_lines(capfd.readouterr().err)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("gluon-robust: error: training diverged: ")
    assert "epoch 1, step" in lines[0] and "is kept in" in lines[0] and "lower --lr (now 1e+10)" in lines[0]
    assert not list(save.glob("*.params"))  # no weights published
    _finite_checkpoint(save / "checkpoint")


# ------------------------------------------------------------------ SIGINT and SIGTERM
def test_signals_are_held_until_the_deferred_block_ends():
    previous = signal.getsignal(signal.SIGTERM)
    done = []
    with pytest.raises(Interrupted) as info:
        with handle_signals():
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("the block finished")
    assert done == ["the block finished"]
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143 and not info.value.forced
    with pytest.raises(Interrupted) as info:
        with handle_signals():
            with deferred():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)  # a second signal does not wait
                done.append("not reached")
    assert info.value.forced and info.value.exit_code == 130 and done == ["the block finished"]
    assert signal.getsignal(signal.SIGTERM) is previous


def test_sigterm_during_train_checkpoints_and_resume_ends_with_the_same_weights(tmp_path, capfd):
    assert main(TRAIN + ["--save-dir", str(tmp_path / "full")]) == 0
    killed = tmp_path / "killed"
    proc = start(TRAIN + ["--save-dir", str(killed)])
    wait_for(proc, lambda: (killed / "metrics.json").exists())  # the first epoch is done: stop in the second
    lines = stderr_lines(stop(proc, signal.SIGTERM))
    assert proc.returncode == 143
    assert lines[-1].startswith("gluon-robust: interrupted by SIGTERM; the checkpoint of epoch 2, step ")
    assert lines[-1].endswith(f"is kept in {killed / 'checkpoint'}; resume with the same command plus --resume")
    state = _finite_checkpoint(killed / "checkpoint")
    assert state["epoch"] == 1 and state["step"] >= 1  # written on the signal, mid-epoch (the epoch's own is step 0)
    assert not list(killed.glob("*.params"))
    assert main(TRAIN + ["--save-dir", str(killed), "--resume"]) == 0
    expected = mx.nd.load(str(tmp_path / "full" / "mnist_resnet20_pgd-at.params"))
    got = mx.nd.load(str(killed / "mnist_resnet20_pgd-at.params"))
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key].asnumpy(), expected[key].asnumpy(), err_msg=key)
    capfd.readouterr()


def test_sigint_during_evaluate_keeps_the_state_and_resume_completes(tmp_path, capfd):
    assert main(EVALUATE + ["--out", str(tmp_path / "full")]) == 0
    out = tmp_path / "interrupted"
    proc = start(EVALUATE + ["--out", str(out)])
    wait_for(proc, lambda: (out / STATE_NAME).exists())  # at least one batch is done
    lines = stderr_lines(stop(proc, signal.SIGINT))
    assert proc.returncode == 130
    assert lines[-1] == (f"gluon-robust: interrupted by SIGINT; the results up to the last finished batch are kept in "
                         f"{out / STATE_NAME}; resume with the same command plus --resume")
    assert sorted(p.name for p in out.iterdir()) == [STATE_NAME]  # no report, no staging
    assert main(EVALUATE + ["--out", str(out), "--resume"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST_NAME, "examples.npz", "report.html", "report.json", "report.md"])  # the state went with the run
    reference = json.loads((tmp_path / "full" / "report.json").read_text())
    resumed = json.loads((out / "report.json").read_text())
    assert comparable(resumed) == comparable(reference)
    capfd.readouterr()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_attack_publishes_nothing(tmp_path, capfd, sig):
    out = tmp_path / "out"
    assert main(ATTACK + ["--limit", "4", "--steps", "1", "--out", str(out)]) == 0
    before = files(out)
    proc = start(ATTACK + ["--limit", "32", "--steps", "200", "--out", str(out)])
    wait_for(proc, lambda: bool(staging(out)))
    lines = stderr_lines(stop(proc, sig))
    assert proc.returncode == 128 + sig
    assert lines[-1] == f"gluon-robust: interrupted by {signal.Signals(sig).name}; nothing partial was published in {out}"
    assert files(out) == before  # the earlier run's outputs, whole; no staging left
    capfd.readouterr()

"""Distributed PGD-AT on MXNet's parameter server, on loopback: the launcher, sync equality, failures, flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from gluon_robust.cli import main
from gluon_robust.data import ArraySource
from gluon_robust.distributed import JobFailed, Reducer, WorkerInfo, check_kvstore, launch
from gluon_robust.errors import ConfigError
from gluon_robust.reporting import MANIFEST_NAME
from gluon_robust.training import PGDAT
from gluon_robust.training.checkpoint import structural_params
from gluon_robust.training.loop import TrainConfig, train_adversarial
from training_helpers import tiny_data, training_model

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
N_TRAIN, N_VAL = 28, 12  # 28 = 3 global batches of 8 + a trailing 4: the trailing batch is split 2 + 2
OPTIONS = dict(epochs=2, batch_size=8, lr=0.01, seed=7, val_eps=0.1, val_steps=2, progress=False)

# One worker: PGD-AT of a tiny network without BatchNorm; dumps the weights after every step.
WORKER = textwrap.dedent("""
    import json, os, signal, sys
    import mxnet as mx
    import numpy as np
    sys.path.insert(0, {tests!r})
    from training_helpers import tiny_data, training_model
    from gluon_robust.data import ArraySource
    from gluon_robust.distributed import Reducer, create_kvstore
    from gluon_robust.training import PGDAT
    from gluon_robust.training.checkpoint import structural_params
    from gluon_robust.training.loop import train_adversarial

    out, devices, crash_step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store, info = create_kvstore("dist_sync")
    ctx = [mx.cpu(i) for i in range(devices)]
    model = training_model(bn=False, seed=info.rank, ctx=ctx)  # other weights per rank: rank 0's are broadcast

    def on_step(epoch, step, global_step):
        if info.rank == 1 and global_step == crash_step:
            os.kill(os.getpid(), signal.SIGKILL)
        weights = {{k: p.data(c).asnumpy() for k, p in structural_params(model.net).items() for c in ctx[:1]}}
        np.savez(os.path.join(out, f"rank{{info.rank}}-step{{global_step}}.npz"), **weights)

    run = train_adversarial(model, PGDAT(eps=0.1, steps=2, seed=1), ArraySource(*tiny_data({n_train}, seed=3)),
                            val=ArraySource(*tiny_data({n_val}, seed=4)), ctx=ctx, kvstore="dist_sync",
                            checkpoint_dir=os.path.join(out, f"ckpt-rank{{info.rank}}"), on_step=on_step,
                            **{options!r})
    reduced = Reducer(store, info).sum([info.rank + 1, 10.0])
    with open(os.path.join(out, f"rank{{info.rank}}.json"), "w") as f:
        json.dump({{"epochs": run.epochs, "num_workers": run.num_workers, "rank": run.rank,
                   "reduced": reduced.tolist(), "global_step": run.global_step}}, f)
""")


def _worker(tmp_path: Path) -> Path:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS), n_train=N_TRAIN, n_val=N_VAL, options=OPTIONS))
    return script


def _single_process_run(devices: int = 1):
    """The reference: one process over the same global batches."""
    import mxnet as mx

    ctx = [mx.cpu(i) for i in range(devices)]
    model = training_model(bn=False, seed=0, ctx=ctx)
    steps = {}

    def on_step(epoch, step, global_step):
        steps[global_step] = {k: p.data(ctx[0]).asnumpy().copy() for k, p in structural_params(model.net).items()}

    run = train_adversarial(model, PGDAT(eps=0.1, steps=2, seed=1), ArraySource(*tiny_data(N_TRAIN, seed=3)),
                            val=ArraySource(*tiny_data(N_VAL, seed=4)), ctx=ctx, kvstore="local", on_step=on_step,
                            **OPTIONS)
    return run, steps


def _env():
    return {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("devices", [1, 2], ids=["1-device", "2-devices-per-worker"])
def test_two_sync_workers_stay_identical_and_match_one_process(tmp_path, devices):
    out = tmp_path / "out"
    out.mkdir()
    tic = time.monotonic()
    result = launch([sys.executable, str(_worker(tmp_path)), str(out), str(devices), "-1"], num_workers=2,
                    num_servers=1, timeout=120, env=_env())
    assert time.monotonic() - tic < 120
    reference, expected = _single_process_run(devices)
    steps = sorted(expected)
    assert steps == list(range(1, 9))  # 2 epochs of 4 steps
    for step in steps:
        rank0, rank1 = np.load(out / f"rank0-step{step}.npz"), np.load(out / f"rank1-step{step}.npz")
        assert sorted(rank0.files) == sorted(expected[step])
        for key in rank0.files:
            np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=f"step {step} {key}: workers differ")
            np.testing.assert_allclose(rank0[key], expected[step][key], rtol=1e-4, atol=1e-5,
                                       err_msg=f"step {step} {key}: differs from the single-process run")
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1] and all(r["num_workers"] == 2 for r in reports)
    assert reports[0]["reduced"] == reports[1]["reduced"] == [3.0, 20.0]  # (1 + 2), 10 + 10
    for epoch, single in enumerate(reference.epochs):
        for report in reports:  # metrics are reduced: every worker reports the global numbers
            got = report["epochs"][epoch]
            assert got["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
            assert got["clean_accuracy"] == pytest.approx(single["clean_accuracy"])
            assert 0.0 <= got["pgd_accuracy"] <= got["clean_accuracy"]
        assert reports[0]["epochs"][epoch]["pgd_accuracy"] == reports[1]["epochs"][epoch]["pgd_accuracy"]
    # Only rank 0 writes checkpoints.
    assert (out / "ckpt-rank0" / "latest.json").is_file()
    assert not (out / "ckpt-rank1").exists()
    assert len(result.worker_pids) == 2


def test_killed_worker_stops_the_job_quickly_and_leaves_no_process(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    tic = time.monotonic()
    with pytest.raises(JobFailed, match=r"worker #[01] \(pid \d+\) was killed by SIGKILL .*stopped the job") as info:
        launch([sys.executable, str(_worker(tmp_path)), str(out), "1", "3"], num_workers=2, num_servers=1,
               timeout=120, grace=2.0, env=_env())
    assert time.monotonic() - tic < 60
    assert info.value.exit_code == 128 + 9
    assert len(info.value.pids) == 4  # scheduler, server, 2 workers
    for pid in info.value.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (out / "rank0.json").exists()  # rank 0 was stopped mid-run, not left waiting for rank 1


def test_launcher_timeout_stops_a_hung_job(tmp_path):
    """A job that never finishes (here: workers that join no store and sleep) ends at the timeout."""
    tic = time.monotonic()
    with pytest.raises(JobFailed, match=r"ran past its timeout of 1\.5 s") as info:
        launch([sys.executable, "-c", "import time; time.sleep(60)"], num_workers=1, num_servers=1, timeout=1.5,
               grace=1.0)
    assert time.monotonic() - tic < 15
    assert info.value.exit_code == 124
    for pid in info.value.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (an orphan waits there for whoever reaps orphans here)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z"


@pytest.mark.parametrize("sig, status", [
    (signal.SIGTERM, 130),
    pytest.param(signal.SIGKILL, -9, marks=pytest.mark.slow),
], ids=["sigterm", "sigkill"])
def test_a_stopped_launcher_takes_its_job_with_it(tmp_path, sig, status):
    """SIGTERM (a cluster manager) stops the job; even SIGKILL of the launcher ends the workers (PDEATHSIG)."""
    pid_file = tmp_path / "worker.pid"
    worker = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    launcher = subprocess.Popen([sys.executable, "-m", "gluon_robust.cli", "launch", "-n", "1", "--timeout", "120",
                                 "--", sys.executable, "-c", worker], env=dict(os.environ, **_env()),
                                stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 60), "the worker never started"
        worker_pid = int(pid_file.read_text())
        launcher.send_signal(sig)
        assert launcher.wait(timeout=30) == status
        assert _wait_for(lambda: _gone(worker_pid), 15), "the worker outlived its launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    if sig == signal.SIGTERM:
        assert launcher.stderr.read().strip().splitlines()[-1] == "gluon-robust: interrupted"


def test_launch_command_reports_a_failed_worker_in_one_line(capsys):
    code = main(["launch", "-n", "1", "-s", "1", "--timeout", "60", "--", sys.executable, "-c",
                 "import sys; sys.exit(3)"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert len(err) == 1 and "worker #0 (pid" in err[0] and "exited with status 3" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["launch", "-n", "2"], "worker command after --"),
    (["launch", "-n", "0", "--", "true"], "num_workers must be a positive integer, got 0"),
    (["launch", "-n", "1", "--port", "70000", "--", "true"], "--port must be an integer in 1..65535, got 70000"),
])
def test_launch_bad_input_is_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_kvstore_flag_bad_value_is_one_line(capsys):
    assert main(["train", "--config", "mnist_resnet20", "--kvstore", "dist_bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kvstore must be one of local, device, dist_sync, dist_async, got 'dist_bogus'" in err[0]


def test_script_kvstore_bad_value_is_one_line():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_adversarial.py"), "--config",
                           "mnist_resnet20", "--kvstore", "nope"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **_env()))
    assert done.returncode == 2
    lines = [line for line in done.stderr.strip().splitlines() if "arguments:" not in line]
    assert lines == ["train_adversarial.py: error: kvstore must be one of local, device, dist_sync, dist_async, "
                     "got 'nope'"]


def test_dist_kvstore_outside_a_job_is_a_config_error(monkeypatch):
    for name in ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER", "DMLC_NUM_WORKER"):
        monkeypatch.delenv(name, raising=False)
    data = ArraySource(*tiny_data(8))
    with pytest.raises(ConfigError, match=r"kvstore dist_sync runs inside a parameter-server job.*gluon-robust launch"):
        train_adversarial(training_model(bn=False), PGDAT(eps=0.1, steps=1), data, kvstore="dist_sync",
                          epochs=1, batch_size=4, progress=False)


def test_dist_async_refuses_what_needs_the_optimizer_on_the_workers():
    data = ArraySource(*tiny_data(8))
    with pytest.raises(ConfigError, match=r"dist_async .* cannot take lr_decay_epochs, resume; use dist_sync"):
        train_adversarial(training_model(bn=False), PGDAT(eps=0.1, steps=1), data, kvstore="dist_async",
                          lr_decay_epochs=(1,), resume=True, checkpoint_dir="unused", epochs=1, batch_size=4,
                          progress=False)


def test_kvstore_values_and_single_process_reducer():
    assert check_kvstore(" Dist_Sync ") == "dist_sync"
    with pytest.raises(ConfigError, match="kvstore must be one of"):
        check_kvstore("nccl")
    with pytest.raises(ConfigError, match="kvstore must be one of"):
        TrainConfig(model="cifar_resnet20_v1", kvstore="horovod")
    reducer = Reducer(None, WorkerInfo("local"))
    assert not reducer.active
    np.testing.assert_array_equal(reducer.sum([1.5, 2.0]), [1.5, 2.0])


def test_launched_train_script_writes_once_with_the_job_shape(tmp_path):
    """The full script as 2 workers of a dist_sync job: rank 0 alone writes params, config and metrics."""
    save = tmp_path / "run"
    code = main(["launch", "-n", "2", "-s", "1", "--timeout", "300", "--", sys.executable,
                 str(ROOT / "scripts" / "train_adversarial.py"), "--model", "cifar_resnet20_v1", "--limit", "32",
                 "--val-limit", "16", "--epochs", "1", "--batch-size", "16", "--steps", "1", "--eps", "0.1",
                 "--kvstore", "dist_sync", "--save-dir", str(save), "--no-progress"])
    assert code == 0
    metrics = json.loads((save / "metrics.json").read_text())
    assert metrics["kvstore"] == "dist_sync" and metrics["num_workers"] == 2 and metrics["finished"]
    assert metrics["metrics_over"] == "all workers"
    assert Path(metrics["outputs"]["params"]).is_file() and Path(metrics["outputs"]["config"]).is_file()
    assert sorted(p.name for p in save.iterdir()) == sorted(
        [MANIFEST_NAME, "checkpoint", "metrics.json", "cifar_resnet20_v1_pgd-at.params", "cifar_resnet20_v1_pgd-at.yaml"])

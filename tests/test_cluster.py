"""evaluate, certify and attack --cluster on Dask distributed: the single-process outputs, lost workers, resume,
refusals, imports.

The oracle of every equality is the single-process run of the same command
(``gluon-robust evaluate`` without ``--cluster``): its ``report.json`` minus the
run-dependent fields (:data:`~gluon_robust.evaluation.report.TIMING_KEYS`) and
its ``examples.npz`` must be reproduced exactly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

pytest.importorskip("distributed")

from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402

from gluon_robust.cli import build_parser, main  # noqa: E402
from gluon_robust.cluster import (  # noqa: E402
    STATE_DIR, ClusterSpec, EvaluateSettings, connect, default_chunk_size, evaluate_on_cluster, parse_cluster,
    local_workers, oversubscription_warning, worker_environment, worker_threads,
)
from gluon_robust.commands.evaluate import ArgsLoader  # noqa: E402
from gluon_robust.errors import ConfigError  # noqa: E402
from gluon_robust.evaluation.report import comparable  # noqa: E402
from gluon_robust.validation import InvalidValue  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "gluon_robust" / "model_configs" / "mnist_resnet20.params"

#: A small run: 4 digits, FGSM then PGD (random start: per-sample random numbers), in batches of 2.
FLAGS = ["--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "4", "--attacks", "fgsm,pgd",
         "--eps", "0.1", "--batch-size", "2", "--no-progress"]


def _report(directory: Path) -> dict:
    return json.loads((directory / "report.json").read_text(encoding="utf-8"))


def _assert_same_run(run: Path, reference: Path) -> None:
    """``run`` holds the reference's report (all but the run-dependent fields) and its examples, exactly."""
    got, want = _report(run), _report(reference)
    assert comparable(got) == comparable(want)
    assert got["fingerprint"] == want["fingerprint"]
    a, b = np.load(run / "examples.npz"), np.load(reference / "examples.npz")
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert not (run / STATE_DIR).exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The single-process run of :data:`FLAGS`."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["evaluate", *FLAGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def scheduler():
    """A LocalCluster of 2 workers, used through its ``tcp://`` address (as a remote scheduler would be)."""
    with connect(ClusterSpec(text="local:2", workers=2)) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


def _settings_and_loader(flags, out: Path, loader=None):
    args = build_parser().parse_args(["evaluate", *flags, "--out", str(out)])
    attacks = tuple(a for a in args.attacks.split(",")) if args.attacks else None
    settings = EvaluateSettings(recipe=args.recipe, attacks=attacks, eps=tuple(args.eps), norm=args.norm,
                                batch_size=args.batch_size, seed=args.seed, max_examples=args.max_examples)
    return settings, (loader or ArgsLoader)(args)


# ------------------------------------------------------------------ parsing, no Dask
@pytest.mark.parametrize("text, workers, address", [
    ("local:1", 1, None), ("local:4", 4, None), ("LOCAL:2", 2, None),
    ("tcp://10.0.0.1:8786", None, "tcp://10.0.0.1:8786"), ("tcp://scheduler.example:1", None, "tcp://scheduler.example:1"),
])
def test_parse_cluster(text, workers, address):
    spec = parse_cluster(text)
    assert (spec.workers, spec.address, spec.local) == (workers, address, workers is not None)


@pytest.mark.parametrize("text", ["local:0", "local:", "local:-1", "local:2.5", "local:257", "local", "tcp://host",
                                  "tcp://:8786", "tcp://host:0", "tcp://host:99999", "http://host:8786", "", "2"])
def test_parse_cluster_refuses(text):
    with pytest.raises(InvalidValue, match=r"cluster must be local:N .* or tcp://HOST:PORT"):
        parse_cluster(text)


@pytest.mark.parametrize("workers, cores, warned", [(1, 2, False), (2, 2, False), (3, 2, True), (4, 2, True),
                                                    (16, 16, False)])
def test_more_local_workers_than_cores_is_warned(workers, cores, warned):
    warning = oversubscription_warning(workers, cores)
    assert (warning is not None) == warned
    if warned:
        assert f"local:{workers}" in warning and f"{cores} cores" in warning and f"starting {cores}" in warning


@pytest.mark.parametrize("workers, cores, started", [(1, 2, 1), (2, 2, 2), (3, 2, 2), (4, 2, 2), (256, 16, 16),
                                                     (5, 16, 5)])
def test_local_workers_are_capped_at_the_cores(workers, cores, started):
    assert local_workers(workers, cores) == started


def test_local_cluster_past_the_cores_starts_one_worker_per_core(caplog, monkeypatch):
    """``local:N`` with N = cores + 2 starts one single-threaded worker per core and says so (at most 2 cores
    counted, so that the test starts 2 workers on any machine)."""
    import gluon_robust.cluster.connection as connection

    cores = min(2, connection._cores())
    monkeypatch.setattr(connection, "_cores", lambda: cores)
    asked = cores + 2
    with caplog.at_level(logging.WARNING, logger="gluon_robust.cluster.connection"):
        with connect(ClusterSpec(text=f"local:{asked}", workers=asked)) as client:
            client.wait_for_workers(cores, timeout=60)
            workers = client.scheduler_info()["workers"]
            threads = client.run(lambda: os.environ.get("OMP_NUM_THREADS"))
    assert len(workers) == cores and set(threads.values()) == {"1"}
    assert any(f"starting {cores} (one per core)" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("workers, cores, threads", [(1, 2, 2), (2, 2, 1), (4, 2, 1), (2, 16, 8), (3, 16, 5)])
def test_worker_threads_never_oversubscribe(workers, cores, threads):
    assert worker_threads(workers, cores) == threads
    env = worker_environment(threads)
    assert env["OMP_NUM_THREADS"] == env["MXNET_OMP_MAX_THREADS"] == str(threads)


def test_default_chunks_depend_on_the_run_only():
    assert default_chunk_size(200, 128) == 25 and default_chunk_size(10_000, 128) == 128
    assert default_chunk_size(3, 64) == 1


@pytest.mark.parametrize("value", ["local:0", "tcp://nowhere", "banana"])
def test_cli_bad_cluster_is_one_line_before_work(tmp_path, capsys, value):
    out = tmp_path / "out"
    start = time.perf_counter()
    assert main(["evaluate", *FLAGS, "--out", str(out), "--cluster", value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--cluster" in err and repr(value) in err
    assert time.perf_counter() - start < 5 and not out.exists()


def test_cli_cluster_with_shard_or_chunk_size_alone_is_refused(tmp_path, capsys):
    assert main(["evaluate", *FLAGS, "--out", str(tmp_path), "--cluster", "local:2", "--shard", "0/2"]) == 2
    assert "--cluster and --shard cannot be combined" in capsys.readouterr().err
    assert main(["evaluate", *FLAGS, "--out", str(tmp_path), "--chunk-size", "2"]) == 2
    assert "--chunk-size needs --cluster" in capsys.readouterr().err
    assert main(["evaluate", *FLAGS, "--out", str(tmp_path), "--cluster", "local:2", "--chunk-size", "0"]) == 2
    assert "--chunk-size must be" in capsys.readouterr().err


def test_dask_is_imported_only_with_cluster(tmp_path):
    """evaluate, certify and attack without --cluster (and the validation of --cluster) never import Dask."""
    code = f"""
import sys
from gluon_robust.cli import main
assert main(["evaluate", *{FLAGS[:4]!r}, "--limit", "1", "--attacks", "fgsm", "--eps", "0.1", "--no-progress",
             "--out", {str(tmp_path / "run")!r}]) == 0
assert main(["certify", *{FLAGS[:4]!r}, "--limit", "1", "--n0", "4", "--n", "8", "--no-progress",
             "--out", {str(tmp_path / "certify")!r}]) == 0
assert main(["attack", *{FLAGS[:4]!r}, "--limit", "1", "--attack", "fgsm", "--eps", "0.1", "--no-progress",
             "--out", {str(tmp_path / "attack")!r}]) == 0
from gluon_robust.cluster import parse_cluster
parse_cluster("local:2")
print("DASK", sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed")))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "DASK []" in done.stdout


# ------------------------------------------------------------------ the cluster runs
def test_local_cluster_workers_get_their_share_of_the_cores(scheduler):
    """``local:2`` (the fixture's cluster) sets MXNet's and OpenMP's threads in each worker before MXNet starts there."""
    want = str(worker_threads(2))
    found = scheduler.run(lambda: {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS")})
    assert len(found) == 2 and all(env == {"OMP_NUM_THREADS": want, "MXNET_OMP_MAX_THREADS": want}
                                   for env in found.values())


def test_local_workers_start_with_the_tuned_allocator(scheduler):
    """glibc reads the allocator settings (gluon_robust.allocator) when each worker process starts."""
    names = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
    found = scheduler.run(lambda: tuple(os.environ.get(name) for name in names))
    assert len(found) == 2 and set(found.values()) == {("1", "0", str(2**31 - 1))}


def test_local2_equals_single_process(scheduler, reference, tmp_path, capsys):
    """The CLI on the fixture's ``local:2`` cluster, through its ``tcp://`` address, gives the single-process report."""
    out = tmp_path / "cluster"
    address = scheduler.scheduler.address
    assert main(["evaluate", *FLAGS, "--out", str(out), "--cluster", address, "--chunk-size", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"cluster {address}: 2 worker(s), 4 of 4 chunk(s)" in printed and "dashboard http://" in printed
    _assert_same_run(out, reference)
    cluster = _report(out)["cluster"]
    assert [(c["start"], c["stop"]) for c in cluster["chunk_table"]] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert sum(w["samples"] for w in cluster["workers"].values()) == 4
    assert all(w["seconds"] > 0 for w in cluster["workers"].values())


@pytest.mark.slow
def test_cli_local2_starts_and_stops_its_own_cluster(reference, tmp_path, capsys):
    out = tmp_path / "cluster"
    assert main(["evaluate", *FLAGS, "--out", str(out), "--cluster", "local:2", "--chunk-size", "1"]) == 0
    assert "cluster local:2: 2 worker(s), 4 of 4 chunk(s)" in capsys.readouterr().out
    _assert_same_run(out, reference)


class _KillFirstChunk(WorkerPlugin):
    """SIGKILLs the worker process that starts the first chunk, ``delay`` seconds into it (once per ``marker``)."""

    def __init__(self, marker: str, delay: float) -> None:
        self.marker, self.delay = marker, delay

    def transition(self, key, start, finish, **kwargs):  # noqa: D102
        if finish != "executing" or not re.match(r"gluon-robust-[0-9a-f]{10}-\d+$", str(key)):  # a chunk
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGKILL)).start()


def test_killed_worker_chunk_is_rerun_and_the_report_is_equal(scheduler, reference, tmp_path):
    marker = tmp_path / "killed.pid"
    scheduler.register_plugin(_KillFirstChunk(str(marker), delay=0.05), name="kill-first-chunk")
    try:
        settings, loader = _settings_and_loader(FLAGS, tmp_path / "run")
        report = evaluate_on_cluster(loader, settings, cluster=scheduler.scheduler.address, out_dir=tmp_path / "run",
                                     chunk_size=1, progress=False)
    finally:
        scheduler.unregister_worker_plugin("kill-first-chunk")
    killed = int(marker.read_text())
    assert killed not in {c["pid"] for c in report["cluster"]["chunk_table"]}  # its chunk finished elsewhere
    _assert_same_run(tmp_path / "run", reference)


def test_killed_client_resumes_without_redoing_finished_chunks(scheduler, reference, tmp_path):
    settings, loader = _settings_and_loader(FLAGS, tmp_path / "run")
    address = scheduler.scheduler.address
    finished = []

    def stop_after_first(k, directory):
        finished.append(k)
        raise KeyboardInterrupt  # the client dies after writing one chunk

    with pytest.raises(KeyboardInterrupt):
        evaluate_on_cluster(loader, settings, cluster=address, out_dir=tmp_path / "run", chunk_size=1, progress=False,
                            on_chunk=stop_after_first)
    state = tmp_path / "run" / STATE_DIR
    assert [p.name for p in sorted(state.glob("chunk-*/report.json"))] and not (tmp_path / "run" / "report.json").exists()
    ran = []
    report = evaluate_on_cluster(loader, settings, cluster=address, out_dir=tmp_path / "run", chunk_size=1,
                                 progress=False, resume=True, on_chunk=lambda k, d: ran.append(k))
    assert report["cluster"]["resumed_chunks"] == finished
    assert sorted(ran + finished) == [0, 1, 2, 3] and finished[0] not in ran
    _assert_same_run(tmp_path / "run", reference)


def test_resume_with_other_chunks_is_refused(scheduler, tmp_path):
    settings, loader = _settings_and_loader(FLAGS, tmp_path / "run")
    address = scheduler.scheduler.address

    def stop(k, directory):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_on_cluster(loader, settings, cluster=address, out_dir=tmp_path / "run", chunk_size=1, progress=False,
                            on_chunk=stop)
    with pytest.raises(ConfigError, match=r"cluster state .* belongs to a run with another chunk_size \(there 1, here 2\)"):
        evaluate_on_cluster(loader, settings, cluster=address, out_dir=tmp_path / "run", chunk_size=2, progress=False,
                            resume=True)


class _StaleOnWorkers(ArgsLoader):
    """The command line's loader, on hosts whose copy of ``--params`` is stale: workers read ``stale.params``
    where the client reads ``weights.params`` (the same path on another disk)."""

    def load(self):
        from distributed import get_worker

        try:
            get_worker()
        except ValueError:  # the client
            return super().load()
        params = Path(self.fields["params"])
        self.fields = dict(self.fields, params=str(params.with_name("stale.params")))
        return super().load()


def test_worker_with_other_weights_is_refused(scheduler, reference, tmp_path):
    (tmp_path / "weights.params").write_bytes(PARAMS.read_bytes())
    arrays = mx.nd.load(str(PARAMS))
    name = sorted(arrays)[0]
    arrays[name] = arrays[name] + 1e-3  # one array off by 1e-3: another file
    mx.nd.save(str(tmp_path / "stale.params"), arrays)
    flags = [*FLAGS[:2], "--params", str(tmp_path / "weights.params"), *FLAGS[2:]]
    settings, stale = _settings_and_loader(flags, tmp_path / "run", _StaleOnWorkers)
    with pytest.raises(ConfigError, match=r"worker tcp://\S+ has different weights than the client "
                                          r"\(weights fingerprint [0-9a-f]{12} vs [0-9a-f]{12}\); refused"):
        evaluate_on_cluster(stale, settings, cluster=scheduler.scheduler.address, out_dir=tmp_path / "run",
                            chunk_size=2, progress=False)
    assert not (tmp_path / "run" / "report.json").exists()
    # the workers' copy is fixed: their cached stale model is dropped, and the run gives the reference's report
    (tmp_path / "stale.params").write_bytes(PARAMS.read_bytes())
    evaluate_on_cluster(stale, settings, cluster=scheduler.scheduler.address, out_dir=tmp_path / "run", chunk_size=2,
                        progress=False)
    _assert_same_run(tmp_path / "run", reference)


def test_unreachable_scheduler_is_one_line_within_seconds(tmp_path, capsys):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    assert main(["evaluate", *FLAGS, "--out", str(tmp_path / "out"), "--cluster", f"tcp://127.0.0.1:{port}"]) == 2
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"--cluster tcp://127.0.0.1:{port}: no Dask scheduler answered within 5 s" in err
    assert elapsed < 15 and not (tmp_path / "out" / STATE_DIR).exists()


# ------------------------------------------------------------------ certify --cluster
CERTIFY = ["certify", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "4", "--sigma", "0.25",
           "--n0", "20", "--n", "100", "--no-progress"]

#: certify.json fields that depend on the run (and the cluster's record), not on the certificates.
_CERTIFY_RUN_FIELDS = ("seconds", "args", "cluster", "fingerprint")


def _certificates(path: Path) -> dict:
    report = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in report.items() if k not in _CERTIFY_RUN_FIELDS}


def test_certify_on_cluster_equals_single_process_and_resumes(scheduler, tmp_path, capsys):
    assert main([*CERTIFY, "--out", str(tmp_path / "single")]) == 0
    address = scheduler.scheduler.address
    assert main([*CERTIFY, "--out", str(tmp_path / "cluster"), "--cluster", address, "--chunk-size", "1"]) == 0
    assert f"cluster {address}: 2 worker(s), 4 of 4 chunk(s)" in capsys.readouterr().out
    want = _certificates(tmp_path / "single" / "certify.json")
    assert _certificates(tmp_path / "cluster" / "certify.json") == want and len(want["points"]) == 4
    assert not (tmp_path / "cluster" / STATE_DIR).exists()

    # a client stopped after one chunk resumes with the others
    from gluon_robust.cluster import CertifySettings, certify_on_cluster

    args = build_parser().parse_args([*CERTIFY, "--out", str(tmp_path / "resumed")])
    settings = CertifySettings(sigma=0.25, n0=20, n=100, seed=0)

    def stop(k, directory):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        certify_on_cluster(ArgsLoader(args), settings, radii=args.radii, cluster=address, out_dir=tmp_path / "resumed",
                           chunk_size=1, progress=False, on_chunk=stop)
    report = certify_on_cluster(ArgsLoader(args), settings, radii=args.radii, cluster=address,
                                out_dir=tmp_path / "resumed", chunk_size=1, progress=False, resume=True)
    assert len(report["cluster"]["resumed_chunks"]) == 1
    got = {k: v for k, v in report.items() if k not in _CERTIFY_RUN_FIELDS + ("command", "versions")}
    assert got == {k: v for k, v in want.items() if k not in ("command", "versions")}


def test_certify_resume_needs_cluster(tmp_path, capsys):
    assert main([*CERTIFY, "--out", str(tmp_path), "--resume"]) == 2
    assert "--resume needs --cluster" in capsys.readouterr().err


# ------------------------------------------------------------------ attack --cluster
ATTACK = ["attack", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "4", "--attack", "pgd",
          "--eps", "0.1", "--steps", "5", "--batch-size", "2", "--max-images", "3", "--no-progress"]


@pytest.fixture(scope="module")
def attack_reference(tmp_path_factory) -> Path:
    """The single-process ``attack`` of :data:`ATTACK` (PGD's random start: per-sample random numbers)."""
    out = tmp_path_factory.mktemp("attack_reference")
    assert main([*ATTACK, "--out", str(out)]) == 0
    return out


def _assert_same_attack(run: Path, reference: Path) -> None:
    """``run`` holds the reference's files bit for bit; its summary differs only in ``seconds`` and ``cluster``."""
    for name in ("adversarial.npz", "per_sample.csv"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    images = sorted(p.name for p in (reference / "images").iterdir())
    assert images and images == sorted(p.name for p in (run / "images").iterdir())
    assert all((run / "images" / p).read_bytes() == (reference / "images" / p).read_bytes() for p in images)
    got, want = (json.loads((d / "summary.json").read_text(encoding="utf-8")) for d in (run, reference))
    assert {k: v for k, v in got.items() if k not in ("seconds", "cluster")} == \
        {k: v for k, v in want.items() if k != "seconds"}
    assert not (run / STATE_DIR).exists()


def _attack_settings(out: Path, flags=ATTACK, loader=None):
    from gluon_robust.cluster import AttackSettings

    args = build_parser().parse_args([*flags, "--out", str(out)])
    settings = AttackSettings(attack="pgd", options={"eps": 0.1, "steps": 5, "seed": 0}, batch_size=2)
    return settings, (loader or ArgsLoader)(args)


def test_attack_local2_equals_single_process(scheduler, attack_reference, tmp_path, capsys):
    address = scheduler.scheduler.address
    assert main([*ATTACK, "--out", str(tmp_path / "run"), "--cluster", address, "--chunk-size", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"cluster {address}: 2 worker(s), 4 of 4 chunk(s)" in printed and "dashboard http://" in printed
    _assert_same_attack(tmp_path / "run", attack_reference)
    cluster = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))["cluster"]
    assert [(c["start"], c["stop"]) for c in cluster["chunk_table"]] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert sum(w["samples"] for w in cluster["workers"].values()) == 4
    assert all(w["seconds"] > 0 for w in cluster["workers"].values())


def test_attack_killed_client_resumes_without_redoing_finished_chunks(scheduler, attack_reference, tmp_path):
    from gluon_robust.cluster import attack_on_cluster

    settings, loader = _attack_settings(tmp_path / "run")
    address, finished, ran = scheduler.scheduler.address, [], []

    def stop_after_first(k, directory):
        finished.append(k)
        raise KeyboardInterrupt  # the client dies after writing one chunk

    with pytest.raises(KeyboardInterrupt):
        attack_on_cluster(loader, settings, cluster=address, out_dir=tmp_path / "run", chunk_size=1, max_images=3,
                          progress=False, on_chunk=stop_after_first)
    assert list((tmp_path / "run" / STATE_DIR).glob("chunk-*/chunk.json"))
    assert not (tmp_path / "run" / "summary.json").exists()
    summary = attack_on_cluster(loader, settings, cluster=address, out_dir=tmp_path / "run", chunk_size=1,
                                max_images=3, progress=False, resume=True, on_chunk=lambda k, d: ran.append(k))
    assert summary["cluster"]["resumed_chunks"] == finished
    assert sorted(ran + finished) == [0, 1, 2, 3] and finished[0] not in ran
    _assert_same_attack(tmp_path / "run", attack_reference)


def test_attack_worker_with_other_weights_is_refused(scheduler, tmp_path):
    from gluon_robust.cluster import attack_on_cluster

    (tmp_path / "weights.params").write_bytes(PARAMS.read_bytes())
    arrays = mx.nd.load(str(PARAMS))
    name = sorted(arrays)[0]
    arrays[name] = arrays[name] + 1e-3
    mx.nd.save(str(tmp_path / "stale.params"), arrays)
    flags = [*ATTACK[:3], "--params", str(tmp_path / "weights.params"), *ATTACK[3:]]
    settings, stale = _attack_settings(tmp_path / "run", flags, _StaleOnWorkers)
    with pytest.raises(ConfigError, match=r"worker tcp://\S+ has different weights than the client"):
        attack_on_cluster(stale, settings, cluster=scheduler.scheduler.address, out_dir=tmp_path / "run",
                          chunk_size=2, progress=False)
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["--cluster", "local:0"], "--cluster must be"), (["--cluster", "local:2", "--chunk-size", "0"], "--chunk-size"),
    (["--chunk-size", "2"], "--chunk-size needs --cluster"), (["--resume"], "--resume needs --cluster"),
])
def test_attack_bad_cluster_flags_are_one_line_before_work(tmp_path, capsys, flags, message):
    assert main([*ATTACK, "--out", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and not (tmp_path / "out").exists()


"""Evaluation on a Dask distributed cluster: the shards of ``evaluate --shard K/N``, scheduled, retried and merged.

Dask distributed (https://distributed.dask.org) runs the chunks: a
``LocalCluster`` of single-threaded worker processes on one machine
(``--cluster local:N``) or a running scheduler (``--cluster tcp://HOST:PORT``)
with ``dask worker`` processes on any number of hosts. A worker that dies in
the middle of a chunk has its chunk rerun elsewhere by the scheduler.

The evaluation itself is unchanged. A run of ``n`` samples is cut into the
deterministic chunks ``shard_slice(n, (k, N))`` of
:func:`~gluon_robust.evaluation.evaluate.shard_slice` (the slices of
``evaluate --shard k/N``); each chunk is one
:func:`~gluon_robust.evaluation.evaluate` of that shard on a worker. Attacks
draw their random numbers per sample (from the seed and the source index),
so a chunk's numbers do not depend on where it ran, and the merge of the
chunks (:func:`~gluon_robust.evaluation.evaluate.merge_loaded`, the merge of
``merge-reports``) is the report of the single-process run: every field but
:data:`~gluon_robust.evaluation.report.TIMING_KEYS` is equal.

Each finished chunk is written to ``OUT/cluster.state/`` as it arrives (its
``report.json`` and ``examples.npz``, the files of a shard), so a client that
was stopped resumes with ``resume=True`` (``--resume``) and runs only the
chunks that are missing. The run's fingerprint
(:mod:`~gluon_robust.fingerprint`: weights, data, recipe) travels with every
chunk: a worker whose weights, data slice or recipe differ from the client's
(a stale ``.params`` file on a shared disk, say) is refused with an error
naming the part that differs.

Dask is imported only by the functions that use a cluster; :func:`parse_cluster`
is pure Python, so that ``--cluster`` is validated before any work and a run
without it never imports Dask.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from .errors import ConfigError, GluonRobustError
from .validation import InvalidValue

__all__ = [
    "ClusterSpec", "ClusterError", "EvaluateSettings", "Loader", "parse_cluster", "worker_threads",
    "worker_environment", "connect", "evaluate_on_cluster", "run_chunk", "default_chunk_size", "STATE_DIR",
    "CertifySettings", "certify_on_cluster", "run_certify_chunk",
]

logger = logging.getLogger(__name__)

#: The directory inside the output directory that holds the finished chunks while a cluster run goes on.
STATE_DIR = "cluster.state"

#: Seconds to wait for a scheduler before giving up.
CONNECT_TIMEOUT = 5.0

#: The most worker processes ``local:N`` starts.
MAX_LOCAL_WORKERS = 256

_REQUIREMENT = "local:N (N from 1 to 256 worker processes on this machine) or tcp://HOST:PORT (a running Dask scheduler)"
_TCP = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
_IDENTITY = "identity.json"
_FIX = "remove it or run without --resume"

#: Environment variables that set the threads of MXNet's and the BLAS/OpenMP libraries' pools.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class ClusterError(GluonRobustError):
    """The cluster cannot be reached, or it lost the run (a chunk failed on every worker Dask tried)."""


@dataclass(frozen=True)
class ClusterSpec:
    """Where the chunks run: ``local:N`` (``workers=N``) or a scheduler at ``address``.

    Attributes
    ----------
    text : str
        The value as given (for messages).
    workers : int or None
        Worker processes of a local cluster.
    address : str or None
        ``tcp://HOST:PORT`` of a running Dask scheduler.
    """

    text: str
    workers: Optional[int] = None
    address: Optional[str] = None

    @property
    def local(self) -> bool:
        """Whether this spec starts a ``LocalCluster``."""
        return self.workers is not None


def parse_cluster(text: Any) -> ClusterSpec:
    """Parse ``--cluster``: ``local:N`` or ``tcp://HOST:PORT``.

    Raises
    ------
    InvalidValue
        For anything else (the CLI names the flag: ``--cluster must be local:N ... got 'x'``).
    """
    value = str(text).strip() if isinstance(text, str) else None
    if value is not None and value.lower().startswith("local:"):
        count = value[len("local:"):]
        if count.isdigit() and 1 <= int(count) <= MAX_LOCAL_WORKERS:
            return ClusterSpec(text=value, workers=int(count))
    elif value is not None:
        match = _TCP.match(value)
        if match and 1 <= int(match.group("port")) <= 65535:
            return ClusterSpec(text=value, address=value)
    raise InvalidValue("cluster", text, _REQUIREMENT)


def worker_threads(n_workers: int, cores: Optional[int] = None) -> int:
    """Threads per worker so that ``n_workers`` processes do not oversubscribe ``cores`` (default: this machine's)."""
    cores = cores if cores is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count() or 1)
    return max(1, int(cores) // max(1, int(n_workers)))


def worker_environment(threads: int) -> Dict[str, str]:
    """The environment of a worker process whose MXNet and OpenMP pools have ``threads`` threads."""
    return {name: str(int(threads)) for name in THREAD_VARIABLES}


@contextlib.contextmanager
def _restored_environment(names: Sequence[str]) -> Iterator[None]:
    """Put back the variables ``names`` of this process's environment (Dask's nanny sets them before spawning)."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def connect(spec: ClusterSpec | str, *, timeout: float = CONNECT_TIMEOUT) -> Iterator[Any]:
    """A ``distributed.Client`` of the cluster ``spec``, closed (with the local cluster it started) on exit.

    ``local:N`` starts a ``LocalCluster`` of ``N`` worker processes with one
    Dask thread each, whose MXNet and OpenMP pools get ``cores // N`` threads
    (at least one; see :func:`worker_threads`), set before the worker process
    starts so that MXNet reads them when it is imported there.

    Raises
    ------
    ClusterError
        If no scheduler answers at ``tcp://HOST:PORT`` within ``timeout`` seconds.
    """
    spec = parse_cluster(spec) if isinstance(spec, str) else spec
    import dask
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_dask())
        if spec.local:
            env = worker_environment(worker_threads(spec.workers))
            stack.enter_context(_restored_environment(tuple(env) + ("MALLOC_TRIM_THRESHOLD_",)))
            pre_spawn = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}, **env)
            with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}):
                cluster = stack.enter_context(LocalCluster(
                    n_workers=spec.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                    silence_logs=logging.ERROR,
                ))
            client = stack.enter_context(Client(cluster, timeout=max(timeout, 30.0)))
        else:
            try:
                client = Client(spec.address, timeout=timeout)
            except (OSError, TimeoutError) as err:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ClusterError(f"--cluster {spec.text}: no Dask scheduler answered within {timeout:g} s "
                                   f"({reason[:160]}); start one with `dask scheduler` and check the address") from None
            stack.enter_context(client)
        yield client


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Keep Dask's INFO records (and the tracebacks of connections closed at shutdown) off the terminal."""
    names = ("distributed", "tornado")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def dashboard(client: Any) -> str:
    """The dashboard's address, with a hint when Bokeh (which draws it) is not installed."""
    link = str(getattr(client, "dashboard_link", "") or "")
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return f"{link or 'none'} (install bokeh>=3.1 to see the dashboard)"
    return link or "none"


# ------------------------------------------------------------------ what a chunk needs
class Loader(Protocol):
    """Builds the model and the data source on a worker (and on the client).

    It must be picklable (it travels to the workers) and say what it loads in
    ``key``: a worker keeps one loaded model per key and reuses it for every
    chunk (see :func:`run_chunk`).
    """

    key: str

    def load(self) -> Tuple[Any, Any]:
        """``(model, source)``: the classifier and the *whole* data source (chunks take their slices)."""


@dataclass(frozen=True)
class EvaluateSettings:
    """The settings of :func:`~gluon_robust.evaluation.evaluate` that a chunk runs with (its keyword arguments)."""

    recipe: str = "standard"
    attacks: Optional[Tuple[str, ...]] = None
    eps: Tuple[float, ...] = (8 / 255,)
    norm: str = "linf"
    batch_size: Optional[int] = None
    seed: int = 0
    max_examples: int = 8
    max_memory: Optional[int] = None
    probe_size: int = 32

    def prepare_kwargs(self) -> Dict[str, Any]:
        """The keywords of :func:`~gluon_robust.evaluation.evaluate.prepare`."""
        return {"recipe": self.recipe, "attacks": None if self.attacks is None else list(self.attacks),
                "eps": list(self.eps), "norm": self.norm, "batch_size": self.batch_size, "seed": self.seed,
                "max_memory": self.max_memory}

    def kwargs(self) -> Dict[str, Any]:
        """The keywords of :func:`~gluon_robust.evaluation.evaluate`."""
        return {**self.prepare_kwargs(), "max_examples": self.max_examples, "probe_size": self.probe_size}


# ------------------------------------------------------------------ the worker side
@dataclass
class _Loaded:
    model: Any
    source: Any
    weights: str
    probes: Dict[Any, Any] = field(default_factory=dict)
    chunks: int = 0


#: Models loaded on this worker process, by loader key (the last two).
_CACHE: "OrderedDict[str, _Loaded]" = OrderedDict()
_CACHE_SIZE = 2
_CACHE_LOCK = threading.Lock()


def _worker_name() -> str:
    """This worker's address (or ``pid N`` outside a Dask worker)."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _load(loader: Loader, weights: Optional[str] = None) -> _Loaded:
    """The model and source of ``loader``, loaded once per worker process and key.

    With ``weights`` (the client's weights fingerprint), a cached model with
    other weights is loaded again first: the file may have been replaced since.
    """
    from .fingerprint import weights_fingerprint

    with _CACHE_LOCK:
        entry = _CACHE.get(loader.key)
        if entry is not None and weights is not None and entry.weights != weights:
            logger.info("worker %s: the cached model has other weights than the client's, loading it again",
                        _worker_name())
            entry = None
        if entry is None:
            start = time.perf_counter()
            model, source = loader.load()
            entry = _Loaded(model=model, source=source, weights=weights_fingerprint(model))
            _CACHE[loader.key] = entry
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
            logger.info("worker %s loaded the model in %.2f s", _worker_name(), time.perf_counter() - start)
        else:
            _CACHE.move_to_end(loader.key)
        return entry


def _preload(loader: Loader) -> str:
    """Load the model on this worker ahead of its first chunk (a task of its own, pinned to each worker at start)."""
    import mxnet  # noqa: F401  -- the import is most of a cold worker's start

    _load(loader)
    return _worker_name()


def run_chunk(
    loader: Loader, settings: EvaluateSettings, k: int, n: int, expected: Dict[str, str],
    probe: Optional[Tuple[Tuple[str, int, int], Tuple[Dict[str, Any], List[str]]]] = None,
) -> Dict[str, Any]:
    """Evaluate chunk ``k`` of ``n`` (the shard ``k/n``) on this worker: the task the client submits.

    Parameters
    ----------
    loader : Loader
        Builds the model and the whole source (once per worker, see :class:`Loader`).
    settings : EvaluateSettings
        The evaluation's settings.
    k, n : int
        The chunk: shard ``k`` of ``n``.
    expected : dict
        The client's fingerprint parts: ``weights`` and ``recipe`` of the run
        and ``data`` of this chunk's slice (SHA-256 digests).
    probe : tuple, optional
        The client's sanity probe, ``((norm, seed, probe_size), (measurements, warnings))``
        (see :func:`~gluon_robust.evaluation.evaluate.sanity_probe`), so that
        the workers do not each run it again.

    Returns
    -------
    dict
        ``report`` (the shard's report, with ``chunk``: worker, pid and
        seconds), ``examples`` (the arrays of its ``examples.npz``).

    Raises
    ------
    ConfigError
        If this worker's weights or recipe differ from the client's.
    DataError
        If its data slice differs.
    """
    from .evaluation.evaluate import _evaluate
    from .fingerprint import mismatch, short

    start = time.perf_counter()
    worker = _worker_name()
    entry = _load(loader, expected["weights"])
    fix = "give every worker the same weights, data and version as the client (a stale copy on a shared disk?)"
    if entry.weights != expected["weights"]:
        raise ConfigError(f"worker {worker} has different weights than the client (weights fingerprint "
                          f"{short(entry.weights)} vs {short(expected['weights'])}); refused: {fix}")
    if probe is not None:
        entry.probes.setdefault(tuple(probe[0]), probe[1])
    report, examples = _evaluate(entry.model, entry.source, shard=(k, n), progress=False, probe_cache=entry.probes,
                                 weights=entry.weights, **settings.kwargs())
    for part in ("recipe", "data"):
        if report["fingerprint"][part] != expected[part]:
            raise mismatch(part, expected[part], report["fingerprint"][part], f"worker {worker} (chunk {k} of {n})",
                           "the client", fix)
    entry.chunks += 1
    report["chunk"] = {"worker": worker, "pid": os.getpid(), "seconds": round(time.perf_counter() - start, 3)}
    return {"report": report, "examples": examples}


# ------------------------------------------------------------------ the client side
def default_chunk_size(n: int, batch_size: int) -> int:
    """Samples per chunk when none is given: one batch, but at most ``ceil(n / 8)`` so that a small run has 8 chunks.

    It depends only on the run (never on the number of workers), so a resume
    with another cluster finds the same chunks.
    """
    return max(1, min(int(batch_size), math.ceil(int(n) / 8)))


def _chunk_dir(state: Path, k: int, n: int) -> Path:
    return state / f"chunk-{k:05d}-of-{n:05d}"


def _write_chunk(state: Path, k: int, n: int, report: Dict[str, Any], examples: Dict[str, np.ndarray]) -> Path:
    """Write a finished chunk as a shard directory (examples first, ``report.json`` last: its mark of completion)."""
    from .io import atomic_save_npz, atomic_write_json

    directory = _chunk_dir(state, k, n)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(directory / "examples.npz", **examples)
    atomic_write_json(directory / "report.json", report)
    return directory


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _open_state(out_dir: Path, identity: Dict[str, Any], resume: bool) -> Path:
    """The state directory, emptied without ``resume``; with it, refused when it belongs to another run."""
    from .fingerprint import PARTS, mismatch
    from .io import atomic_write_json

    state = out_dir / STATE_DIR
    what = f"the cluster state {state}"
    if resume and (state / _IDENTITY).is_file():
        try:
            saved = json.loads((state / _IDENTITY).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            saved = None
        if not isinstance(saved, dict):
            raise ConfigError(f"{what} has an unreadable {_IDENTITY}; {_FIX}")
        for part in PARTS:
            if saved.get(part) != identity[part]:
                raise mismatch(part, identity[part], str(saved.get(part)), what, "this run", _FIX)
        for key in sorted(set(saved) | set(identity)):
            if key not in PARTS and _canonical(saved.get(key)) != _canonical(identity.get(key)):
                raise ConfigError(f"{what} belongs to a run with another {key} (there {saved.get(key)!r}, here "
                                  f"{identity.get(key)!r}); {_FIX}")
        return state
    if resume:
        logger.warning("--resume: no cluster state in %s, starting from the beginning", state)
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    atomic_write_json(state / _IDENTITY, identity)
    return state


def _kept_chunks(state: Path, expected: Sequence[Dict[str, str]],
                 finished: Optional[Callable[[Path, int, int, Dict[str, str]], Any]]) -> Dict[int, Any]:
    """The chunks of an interrupted run that ``finished`` accepts (none without ``--resume``), by index."""
    if finished is None:
        return {}
    found = {k: finished(state, k, len(expected), part) for k, part in enumerate(expected)}
    return {k: value for k, value in found.items() if value is not None}


def _announce(announce: Callable[[str], None], client: Any, spec: ClusterSpec, pending: Sequence[int], n_chunks: int,
              size: int, reused: int, link: str) -> None:
    workers = len(client.scheduler_info().get("workers", {}))
    announce(f"cluster {spec.text}: {workers} worker(s), {len(pending)} of {n_chunks} chunk(s) of up to {size} "
             f"samples to run ({reused} finished before), dashboard {link}")


def _finished(state: Path, k: int, n: int, expected: Dict[str, str]) -> Optional[Tuple[Any, ...]]:
    """The loaded chunk ``k`` of ``n`` when the state holds it (and its fingerprint is the run's), else None."""
    from .evaluation.evaluate import load_shard

    directory = _chunk_dir(state, k, n)
    if not (directory / "report.json").is_file():
        return None
    report, examples, fingerprint = load_shard(directory)
    found = fingerprint.to_dict()
    if any(found[part] != expected[part] for part in expected) or report["shard"]["k"] != k:
        logger.warning("chunk %d of %d in %s belongs to another run: it is run again", k, n, directory)
        return None
    return report, examples, fingerprint, str(directory)


def _worker_timing(loaded: Sequence[Tuple[Any, ...]]) -> Dict[str, Dict[str, Any]]:
    """Chunks, samples and seconds per worker, from the chunks' reports."""
    workers: Dict[str, Dict[str, Any]] = {}
    for report, _, _, _ in loaded:
        chunk = report.get("chunk") or {}
        row = workers.setdefault(str(chunk.get("worker")), {"chunks": 0, "samples": 0, "seconds": 0.0})
        row["chunks"] += 1
        row["samples"] += int(report["n"])
        row["seconds"] = round(row["seconds"] + float(chunk.get("seconds", 0.0)), 3)
    for row in workers.values():
        row["samples_per_second"] = round(row["samples"] / row["seconds"], 3) if row["seconds"] > 0 else None
    return workers


def evaluate_on_cluster(
    loader: Loader,
    settings: EvaluateSettings,
    *,
    cluster: ClusterSpec | str,
    out_dir: str | Path,
    resume: bool = False,
    chunk_size: Optional[int] = None,
    progress: bool = True,
    args: Optional[Dict[str, Any]] = None,
    announce: Optional[Callable[[str], None]] = None,
    on_chunk: Optional[Callable[[int, Path], None]] = None,
    timeout: float = CONNECT_TIMEOUT,
) -> Dict[str, Any]:
    """Evaluate in chunks on a Dask cluster; the report equals :func:`~gluon_robust.evaluation.evaluate`'s.

    Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", ICML, https://arxiv.org/abs/2003.01690
    (the recipes); Dask distributed, https://distributed.dask.org (the engine).

    Parameters
    ----------
    loader : Loader
        Builds the model and the whole data source, on the client and on every worker.
    settings : EvaluateSettings
        The evaluation's settings (recipe or attacks, eps, norm, batch size, seed...).
    cluster : ClusterSpec or str
        ``local:N`` or ``tcp://HOST:PORT`` (see :func:`parse_cluster`).
    out_dir : path
        The report's directory; ``out_dir/cluster.state/`` holds the finished
        chunks until the report is written.
    resume : bool
        Keep the finished chunks of an interrupted run of the same evaluation
        (same fingerprint, batch size and chunks) and run only the others.
    chunk_size : int, optional
        Samples per chunk; default :func:`default_chunk_size`.
    progress : bool
        One progress bar over all chunks, in images.
    args : dict, optional
        The command-line arguments, recorded in the report.
    announce : callable, optional
        Called with one line at start: the cluster, its workers and its dashboard (default: the log).
    on_chunk : callable, optional
        Called with ``(k, directory)`` after each chunk is written.
    timeout : float
        Seconds to wait for a scheduler.

    Returns
    -------
    dict
        The report; besides :func:`~gluon_robust.evaluation.evaluate`'s fields,
        ``cluster``: the spec, dashboard, chunk size, chunks (slice, worker,
        seconds), per-worker timing and the chunks reused from a resumed run.

    Raises
    ------
    ClusterError
        If the scheduler cannot be reached or Dask gives up on a chunk.
    ConfigError, DataError
        For bad settings; for a worker whose weights, recipe or data slice
        differ from the client's; with ``resume``, for a state of another run.
    """

    from .evaluation.evaluate import load_shard, merge_loaded, prepare, run_fingerprint, sanity_probe, shard_slice
    from .evaluation.report import write_report
    from .fingerprint import data_fingerprint
    from .reporting import prepare_output_dir, staged_output
    from .validation import check_int

    spec = parse_cluster(cluster) if isinstance(cluster, str) else cluster
    if chunk_size is not None:
        check_int("chunk_size", chunk_size)
    announce = announce or (lambda line: logger.info("%s", line))
    start = time.perf_counter()
    with connect(spec, timeout=timeout) as client:  # first: an unreachable scheduler fails before any work
        link = dashboard(client)
        preloads = _preload_all(client, loader)  # the workers load while the client fingerprints
        model, source = loader.load()
        prepared = prepare(model, source, **settings.prepare_kwargs())
        source = prepared.source
        fingerprint = run_fingerprint(model, source, prepared.built, stages=prepared.stages, recipe=prepared.recipe,
                                      eps=prepared.eps, norm=prepared.norm, seed=settings.seed,
                                      batch_size=prepared.batch_size)
        total = len(source)
        size = chunk_size or default_chunk_size(total, prepared.batch_size)
        n_chunks = max(1, math.ceil(total / size))
        slices = [shard_slice(total, (k, n_chunks)) for k in range(n_chunks)]
        expected = [{"weights": fingerprint.weights, "recipe": fingerprint.recipe,
                     "data": data_fingerprint(source.subset(part), prepared.batch_size)} for part in slices]
        model_name = model.describe() if hasattr(model, "describe") else type(model).__name__
        probe = ((prepared.norm, int(settings.seed), settings.probe_size),
                 sanity_probe(model, source, norm=prepared.norm, seed=settings.seed, probe_size=settings.probe_size))
        del model, source  # the workers hold their own
        identity = {**fingerprint.to_dict(), "batch_size": prepared.batch_size, "n": total, "chunks": n_chunks,
                    "chunk_size": size, "model": model_name, "settings": asdict(settings)}
        out = prepare_output_dir(out_dir)
        state = _open_state(out, identity, resume)
        done: Dict[int, Tuple[Any, ...]] = _kept_chunks(state, expected, _finished if resume else None)
        reused = sorted(done)
        pending = [k for k in range(n_chunks) if k not in done]
        _announce(announce, client, spec, pending, n_chunks, size, len(reused), link)
        tag = _tag(expected)

        def submit(k: int) -> Any:
            return client.submit(run_chunk, loader, settings, k, n_chunks, expected[k], probe,
                                 key=f"gluon-robust-{tag}-{k}", pure=False)

        def store(k: int, result: Dict[str, Any]) -> Path:
            directory = _write_chunk(state, k, n_chunks, result["report"], result["examples"])
            report, examples, chunk_fingerprint = load_shard(directory)
            done[k] = (report, examples, chunk_fingerprint, str(directory))
            return directory

        _run_with_progress(client, spec, submit, store, pending=pending, slices=slices, reused=reused, done=done,
                           state=state, preloads=preloads, on_chunk=on_chunk, progress=progress, verb="evaluate")
    loaded = [done[k] for k in range(n_chunks)]
    merged, examples = merge_loaded(loaded)
    merged.pop("merged_shards", None)
    merged["fingerprint"] = fingerprint.to_dict()  # the whole run's: the same data, weights and recipe digests
    merged["args"] = json.loads(json.dumps(args or {}, default=str))
    merged["seconds"] = round(time.perf_counter() - start, 3)
    merged["cluster"] = {
        "spec": spec.text, "dashboard": link, "chunk_size": size, "chunks": n_chunks, "resumed_chunks": reused,
        "chunk_table": [{"k": k, "start": slices[k].start, "stop": slices[k].stop, **(done[k][0].get("chunk") or {})}
                        for k in range(n_chunks)],
        "workers": _worker_timing(loaded),
    }
    with staged_output(out, replaces=(STATE_DIR,)) as stage:  # the finished run's chunks go with it
        write_report(stage, merged, examples, bounds=tuple(merged["bounds"]))
    logger.info("report: %s", out / "report.html")
    return merged


def _run_with_progress(
    client: Any, spec: ClusterSpec, submit: Callable[[int], Any], store: Callable[[int, Any], Path], *,
    pending: List[int], slices: List[slice], reused: Sequence[int], done: Dict[int, Any], state: Path,
    preloads: Sequence[Any], on_chunk: Optional[Callable[[int, Path], None]], progress: bool, verb: str,
) -> None:
    """:func:`_run_pending` under one progress bar over all chunks; an interrupt says where the finished ones are."""
    from tqdm import tqdm

    from .interrupts import set_hint

    n_chunks = len(slices)
    bar = tqdm(total=sum(part.stop - part.start for part in slices),
               initial=sum(slices[k].stop - slices[k].start for k in reused), unit="image",
               desc=f"{verb} on {spec.text}", disable=not progress, dynamic_ncols=True)
    try:
        with bar:
            if pending:
                _run_pending(client, spec, submit, pending, n_chunks, slices, state, bar, store, on_chunk)
    except KeyboardInterrupt as err:
        set_hint(err, f"the {len(done)} finished chunk(s) of {n_chunks} are kept in {state}; resume with the "
                      f"same command plus --resume")
        raise
    finally:
        for future in preloads:
            future.cancel()


def _run_pending(
    client: Any, spec: ClusterSpec, submit: Callable[[int], Any], pending: List[int], n_chunks: int,
    slices: List[slice], state: Path, bar: Any, store: Callable[[int, Any], Path],
    on_chunk: Optional[Callable[[int, Path], None]],
) -> None:
    """Submit the pending chunks (``submit(k)`` returns a future) and ``store`` each result as it arrives."""
    from distributed import as_completed

    futures = {submit(k): k for k in pending}
    try:
        for future in as_completed(futures):
            k = futures[future]
            try:
                result = future.result()
            except GluonRobustError:
                raise
            except Exception as err:  # noqa: BLE001 -- Dask's own failures (KilledWorker...) become one line
                first = (str(err).strip().splitlines() or [""])[0]
                raise ClusterError(f"--cluster {spec.text}: chunk {k} of {n_chunks} failed ({type(err).__name__}: "
                                   f"{first[:200]}); the finished chunks are kept in {state}, resume with "
                                   f"--resume") from None
            directory = store(k, result)
            bar.update(slices[k].stop - slices[k].start)
            if on_chunk is not None:
                on_chunk(k, directory)
    finally:
        for future in futures:
            future.cancel()


def _tag(expected: Sequence[Dict[str, str]]) -> str:
    """A short digest of a run's chunk fingerprints, for its task keys."""
    return hashlib.sha256(_canonical(list(expected)).encode("utf-8")).hexdigest()[:10]


def _preload_all(client: Any, loader: Loader) -> List[Any]:
    """One model-loading task pinned to each worker, so that workers load while the client fingerprints."""
    return [client.submit(_preload, loader, key=f"load-model-{address}", workers=[address], allow_other_workers=False,
                          pure=False)
            for address in client.scheduler_info().get("workers", {})]


# ------------------------------------------------------------------ certify
@dataclass(frozen=True)
class CertifySettings:
    """The settings of ``certify`` (randomized smoothing, Cohen et al. 2019) that a chunk runs with."""

    sigma: float
    n0: int = 100
    n: int = 1000
    alpha: float = 0.001
    batch_size: Optional[int] = None  # noise samples per forward pass; None: resolved on the client
    clip: bool = False
    seed: int = 0

    def identity(self) -> Dict[str, Any]:
        """What the chunks' numbers depend on besides weights and data (the recipe part of their fingerprint)."""
        from ._version import __version__

        return {"command": "certify", **asdict(self), "version": __version__}


_POINTS = "points.npz"
_CHUNK = "chunk.json"


def run_certify_chunk(loader: Loader, settings: CertifySettings, k: int, n: int,
                      expected: Dict[str, str]) -> Dict[str, Any]:
    """Certify chunk ``k`` of ``n`` of the source on this worker: the per-sample arrays and the chunk's record.

    Refuses (:class:`~gluon_robust.errors.ConfigError`, or ``DataError`` for
    the data) a worker whose weights, data slice or settings differ from the
    client's ``expected`` fingerprint parts.
    """
    from .commands.certify import certify_points
    from .evaluation.evaluate import shard_slice
    from .fingerprint import data_fingerprint, mismatch, recipe_fingerprint, short

    start = time.perf_counter()
    worker = _worker_name()
    entry = _load(loader, expected["weights"])
    fix = "give every worker the same weights, data and version as the client (a stale copy on a shared disk?)"
    if entry.weights != expected["weights"]:
        raise ConfigError(f"worker {worker} has different weights than the client (weights fingerprint "
                          f"{short(entry.weights)} vs {short(expected['weights'])}); refused: {fix}")
    part = entry.source.subset(shard_slice(len(entry.source), (k, n)))
    found = {"data": data_fingerprint(part), "recipe": recipe_fingerprint(settings.identity())}
    for name in ("recipe", "data"):
        if found[name] != expected[name]:
            raise mismatch(name, expected[name], found[name], f"worker {worker} (chunk {k} of {n})", "the client", fix)
    arrays = certify_points(entry.model, part, progress=False, **asdict(settings))
    chunk = {"k": k, "n_chunks": n, "fingerprint": dict(expected), "worker": worker, "pid": os.getpid(),
             "seconds": round(time.perf_counter() - start, 3), "n": int(len(arrays["label"]))}
    return {"arrays": arrays, "chunk": chunk}


def _certify_done(state: Path, k: int, n: int, expected: Dict[str, str]) -> Optional[Tuple[Dict[str, Any], Dict]]:
    """The finished certify chunk ``k`` of ``n`` in the state (when its fingerprint is the run's), else None."""
    from .commands.certify import POINT_ARRAYS
    from .integrity import load_npz

    directory = _chunk_dir(state, k, n)
    if not (directory / _CHUNK).is_file():
        return None
    try:
        chunk = json.loads((directory / _CHUNK).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        chunk = None
    if not isinstance(chunk, dict) or chunk.get("fingerprint") != expected or chunk.get("k") != k:
        logger.warning("chunk %d of %d in %s belongs to another run or is unreadable: it is run again", k, n, directory)
        return None
    arrays = load_npz(directory / _POINTS, "certify chunk", fix=_FIX)
    if any(name not in arrays for name in POINT_ARRAYS) or len(arrays["label"]) != chunk.get("n"):
        raise ConfigError(f"certify chunk {directory} is incomplete; {_FIX}")
    return chunk, {name: arrays[name] for name in POINT_ARRAYS}


def certify_on_cluster(
    loader: Loader,
    settings: CertifySettings,
    *,
    radii: Sequence[float],
    cluster: ClusterSpec | str,
    out_dir: str | Path,
    resume: bool = False,
    chunk_size: Optional[int] = None,
    progress: bool = True,
    announce: Optional[Callable[[str], None]] = None,
    on_chunk: Optional[Callable[[int, Path], None]] = None,
    timeout: float = CONNECT_TIMEOUT,
    max_memory: Optional[int] = None,
) -> Dict[str, Any]:
    """Certify in chunks on a Dask cluster; the report equals ``certify_source``'s.

    Cohen, Rosenfeld & Kolter (2019), "Certified adversarial robustness via
    randomized smoothing", ICML, https://arxiv.org/abs/1902.02918. Each point
    draws its noise from the seed and its own bytes, so a chunk certifies its
    points as the single process does; the per-sample arrays of the chunks are
    concatenated in order and the report is built from them
    (:func:`~gluon_robust.commands.certify.certify_report`). Chunks are written
    to ``out_dir/cluster.state/`` as they arrive (``--resume`` keeps them);
    the caller publishes the report and removes the state (see ``certify --cluster``).

    Returns
    -------
    dict
        The report of :func:`~gluon_robust.commands.certify.certify_source`
        plus ``cluster`` (chunks, per-worker timing) and ``fingerprint``.
    """

    from .commands.certify import POINT_ARRAYS, certify_report
    from .evaluation.evaluate import shard_slice
    from .fingerprint import RunFingerprint, combine, data_fingerprint, recipe_fingerprint, weights_fingerprint
    from .io import atomic_save_npz, atomic_write_json
    from .reporting import prepare_output_dir
    from .validation import check_int

    spec = parse_cluster(cluster) if isinstance(cluster, str) else cluster
    if chunk_size is not None:
        check_int("chunk_size", chunk_size)
    announce = announce or (lambda line: logger.info("%s", line))
    start = time.perf_counter()
    with connect(spec, timeout=timeout) as client:
        link = dashboard(client)
        preloads = _preload_all(client, loader)
        model, source = loader.load()
        batch_source = "given"
        if settings.batch_size is None:  # as certify does: the largest forward-only batch that fits, at most 1000
            from dataclasses import replace

            from .memory import resolve_batch_size

            resolved, batch_source = resolve_batch_size(model, source.sample_shape, None, max_memory, cap=1000,
                                                        backward=False)
            settings = replace(settings, batch_size=resolved)
        total = len(source)
        size = chunk_size or default_chunk_size(total, 64)
        n_chunks = max(1, math.ceil(total / size))
        slices = [shard_slice(total, (k, n_chunks)) for k in range(n_chunks)]
        weights = weights_fingerprint(model)
        recipe = recipe_fingerprint(settings.identity())
        expected = [{"weights": weights, "recipe": recipe, "data": data_fingerprint(source.subset(part))}
                    for part in slices]
        fingerprint = RunFingerprint(weights=weights, data=combine([e["data"] for e in expected]), recipe=recipe)
        identity = {**fingerprint.to_dict(), "command": "certify", "n": total, "chunks": n_chunks, "chunk_size": size}
        out = prepare_output_dir(out_dir)
        state = _open_state(out, identity, resume)
        done: Dict[int, Tuple[Dict[str, Any], Dict[str, np.ndarray]]] = _kept_chunks(
            state, expected, _certify_done if resume else None)
        reused = sorted(done)
        pending = [k for k in range(n_chunks) if k not in done]
        _announce(announce, client, spec, pending, n_chunks, size, len(reused), link)
        tag = _tag(expected)

        def submit(k: int) -> Any:
            return client.submit(run_certify_chunk, loader, settings, k, n_chunks, expected[k],
                                 key=f"gluon-robust-{tag}-{k}", pure=False)

        def store(k: int, result: Dict[str, Any]) -> Path:
            directory = _chunk_dir(state, k, n_chunks)
            directory.mkdir(parents=True, exist_ok=True)
            atomic_save_npz(directory / _POINTS, **result["arrays"])
            atomic_write_json(directory / _CHUNK, result["chunk"])  # last: the chunk's mark of completion
            done[k] = (result["chunk"], result["arrays"])
            return directory

        _run_with_progress(client, spec, submit, store, pending=pending, slices=slices, reused=reused, done=done,
                           state=state, preloads=preloads, on_chunk=on_chunk, progress=progress, verb="certify")
    parts = [done[k][1] for k in range(n_chunks)]
    arrays = {name: np.concatenate([p[name] for p in parts]) for name in POINT_ARRAYS if name != "clean_correct"}
    arrays["clean_correct"] = np.array(sum(int(p["clean_correct"]) for p in parts), np.int64)
    report = certify_report(arrays, model=model, data=getattr(source, "name", type(source).__name__),
                            radii=radii, seconds=time.perf_counter() - start, **asdict(settings))
    chunks = [done[k][0] for k in range(n_chunks)]
    report["fingerprint"] = fingerprint.to_dict()
    report["batch_size_source"] = batch_source
    report["cluster"] = {
        "spec": spec.text, "dashboard": link, "chunk_size": size, "chunks": n_chunks, "resumed_chunks": reused,
        "chunk_table": [{"k": k, "start": slices[k].start, "stop": slices[k].stop,
                         **{key: chunks[k].get(key) for key in ("worker", "pid", "seconds")}} for k in range(n_chunks)],
        "workers": _worker_timing([({"n": c["n"], "chunk": c}, None, None, None) for c in chunks]),
    }
    return report

"""Where the chunks run: ``--cluster local:N | tcp://HOST:PORT``, parsed, connected to and kept quiet.

:func:`parse_cluster` is pure Python, so that ``--cluster`` is validated
before any work and a run without it never imports Dask; :func:`connect`
imports Dask distributed (https://distributed.dask.org) when it is called.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence

from ..allocator import allocator_environment
from ..errors import GluonRobustError
from ..validation import InvalidValue

logger = logging.getLogger(__name__)

#: Seconds to wait for a scheduler before giving up.
CONNECT_TIMEOUT = 5.0

#: The most worker processes ``local:N`` starts.
MAX_LOCAL_WORKERS = 256

_REQUIREMENT = "local:N (N from 1 to 256 worker processes on this machine) or tcp://HOST:PORT (a running Dask scheduler)"
_TCP = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")

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


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_threads(n_workers: int, cores: Optional[int] = None) -> int:
    """Threads per worker so that ``n_workers`` processes do not oversubscribe ``cores`` (default: this machine's)."""
    cores = cores if cores is not None else _cores()
    return max(1, int(cores) // max(1, int(n_workers)))


def local_workers(requested: int, cores: Optional[int] = None) -> int:
    """The worker processes ``local:N`` starts: ``N``, but no more than ``cores`` (default: this machine's).

    More single-threaded processes than cores only share the cores: on 2 cores
    ``local:4`` took 9% longer than ``local:2`` (4 processes, at 4706ade:
    ``benchmarks/results/bench_cluster.json``; the run since the cap is
    ``bench_cluster-limit100_standard.json``). To run
    more processes than cores on purpose, start ``dask worker --nworkers N`` and
    pass its scheduler's ``tcp://`` address.
    """
    cores = cores if cores is not None else _cores()
    return max(1, min(int(requested), int(cores)))


def oversubscription_warning(n_workers: int, cores: Optional[int] = None) -> Optional[str]:
    """The warning for ``local:N`` with more workers than ``cores`` (default: this machine's), else None."""
    cores = cores if cores is not None else _cores()
    if n_workers <= cores:
        return None
    return (f"--cluster local:{n_workers} asks for more workers than the {cores} cores here; starting "
            f"{local_workers(n_workers, cores)} (one per core), since more processes would only share the cores "
            f"and finish later")


def worker_environment(threads: int) -> Dict[str, str]:
    """The environment of a worker process: MXNet and OpenMP pools of ``threads`` threads, and glibc's allocator
    set as :mod:`gluon_robust.allocator` sets it (for every thread of the worker, Dask's own included)."""
    return {**allocator_environment(), **{name: str(int(threads)) for name in THREAD_VARIABLES}}


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

    ``local:N`` starts a ``LocalCluster`` of ``N`` worker processes, capped at
    the cores (:func:`local_workers`, with a warning), with one Dask thread
    each, whose MXNet and OpenMP pools get ``cores // N`` threads (at least
    one; see :func:`worker_threads`), set before the worker process starts so
    that MXNet reads them when it is imported there.

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
            warning = oversubscription_warning(spec.workers)
            if warning:
                logger.warning(warning)
            n_workers = local_workers(spec.workers)
            env = worker_environment(worker_threads(n_workers))
            stack.enter_context(_restored_environment(tuple(env) + ("MALLOC_TRIM_THRESHOLD_",)))
            pre_spawn = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}, **env)
            with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}):
                cluster = stack.enter_context(LocalCluster(
                    n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
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


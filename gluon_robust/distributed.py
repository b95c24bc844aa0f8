"""Distributed training on MXNet's parameter server (ps-lite): worker helpers and a one-host launcher.

MXNet's distributed key-value store (``kvstore='dist_sync'`` or
``'dist_async'``, Li et al., "Scaling Distributed Machine Learning with the
Parameter Server", OSDI 2014, https://www.usenix.org/system/files/conference/osdi14/osdi14-paper-li_mu.pdf)
does all communication here; nothing in this module opens a socket of its own.
A job is a *scheduler*, one or more *servers* and the *workers*, each a
process told its role by the ``DMLC_*`` environment variables:

=====================  =====================================================
``DMLC_ROLE``          ``scheduler``, ``server`` or ``worker``
``DMLC_PS_ROOT_URI``   the scheduler's address (every process)
``DMLC_PS_ROOT_PORT``  the scheduler's port (every process)
``DMLC_NUM_SERVER``    number of servers
``DMLC_NUM_WORKER``    number of workers
=====================  =====================================================

Importing ``mxnet`` with ``DMLC_ROLE=server`` or ``scheduler`` runs that
role's loop and exits when the workers are done, so a server is simply
``python -c "import mxnet"``. :func:`launch` starts all of them on one host
(MXNet's own ``tools/launch.py`` needs the absent ``dmlc_tracker``), watches
every child, and on the first failure stops the whole job: ps-lite would
otherwise wait forever for a dead peer.

Worker side: :func:`create_kvstore` checks the environment and creates the
store (once per process), :class:`Reducer` sums small arrays (metrics, counts)
over all workers through the same store, and :func:`worker_info` gives the rank.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import ConfigError, GluonRobustError
from .validation import check_host, check_int, check_positive

__all__ = [
    "KVSTORE_TYPES", "DIST_KVSTORE_TYPES", "check_kvstore", "create_kvstore", "worker_info", "WorkerInfo",
    "Reducer", "launch", "JobFailed", "JobResult", "free_port", "dmlc_environment",
]

logger = logging.getLogger(__name__)

#: Values of ``--kvstore``: MXNet's single-process stores and its two parameter-server modes.
KVSTORE_TYPES = ("local", "device", "dist_sync", "dist_async")
DIST_KVSTORE_TYPES = ("dist_sync", "dist_async")
#: The environment a worker of a distributed store needs.
_WORKER_ENV = ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER", "DMLC_NUM_WORKER")
# Keys of the reduction buffers: far above the Trainer's keys (0 .. number of parameters - 1).
_REDUCE_KEY_BASE = 1 << 30
# One store per process: ps-lite starts once, and a second dist store in the same process would re-register.
_STORES: Dict[str, object] = {}
# The reduction key of each array length, shared by every Reducer of the process (a key is initialised once).
_REDUCE_KEYS: Dict[int, int] = {}


def check_kvstore(kind: str) -> str:
    """Validate a ``--kvstore`` value; returns it lower-cased."""
    value = str(kind).strip().lower()
    if value not in KVSTORE_TYPES:
        raise ConfigError(f"kvstore must be one of {', '.join(KVSTORE_TYPES)}, got {kind!r}")
    return value


@dataclass(frozen=True)
class WorkerInfo:
    """Where this process stands in a job.

    Attributes
    ----------
    kvstore : str
        The store type (``local``, ``device``, ``dist_sync`` or ``dist_async``).
    rank, num_workers : int
        This worker's rank and the number of workers (0 and 1 for single-process stores).
    """

    kvstore: str
    rank: int = 0
    num_workers: int = 1

    @property
    def distributed(self) -> bool:
        return self.kvstore in DIST_KVSTORE_TYPES

    @property
    def is_root(self) -> bool:
        """Whether this process writes outputs and reports (rank 0)."""
        return self.rank == 0


def create_kvstore(kind: str):
    """The store a Trainer of this process should use, and this worker's place in the job.

    Returns ``(store, info)``: for ``local`` and ``device`` the store is the type
    name (Gluon skips the store on a single device, as it always did); for the
    distributed types it is the process's one :class:`mxnet.kvstore.KVStore`,
    created on the first call.

    Raises
    ------
    ConfigError
        An unknown type, or a distributed type outside a job (no ``DMLC_*``
        worker environment), which would otherwise hang waiting for a scheduler.
    """
    kind = check_kvstore(kind)
    if kind not in DIST_KVSTORE_TYPES:
        return kind, WorkerInfo(kind)
    missing = [name for name in _WORKER_ENV if not os.environ.get(name)]
    if missing or os.environ.get("DMLC_ROLE") != "worker":
        raise ConfigError(
            f"kvstore {kind} runs inside a parameter-server job, but "
            f"{'DMLC_ROLE is ' + repr(os.environ.get('DMLC_ROLE')) if not missing else ', '.join(missing) + ' unset'}; "
            f"start it with `gluon-robust launch -n WORKERS -s SERVERS -- COMMAND` (see docs/distributed.md)")
    other = [k for k in _STORES if k != kind]
    if other:
        raise ConfigError(f"this process already joined a {other[0]} job; one kvstore type per worker process")
    if kind not in _STORES:
        import mxnet as mx

        _STORES[kind] = mx.kv.create(kind)
    store = _STORES[kind]
    return store, WorkerInfo(kind, int(store.rank), int(store.num_workers))


def worker_info(kind: str) -> WorkerInfo:
    """This worker's rank and the number of workers for store type ``kind`` (creates the store if needed)."""
    return create_kvstore(kind)[1]


class Reducer:
    """Sums small arrays over all workers of a synchronous job through its kvstore.

    Each distinct array length gets one key for the whole process
    (initialised collectively on first use); a ``dist_sync`` server adds the pushes of all workers before
    it answers, so a push followed by a pull returns the sum everywhere.
    Every worker must call :meth:`sum` with the same lengths in the same
    order, as workers running the same loop do. With one worker, or without
    a store, :meth:`sum` returns its input.

    Parameters
    ----------
    store : mxnet.kvstore.KVStore or None
        A ``dist_sync`` store (other stores: no reduction).
    info : WorkerInfo
        The job's shape.
    """

    def __init__(self, store, info: WorkerInfo) -> None:
        self.info = info
        self._store = store if info.kvstore == "dist_sync" and info.num_workers > 1 else None

    @property
    def active(self) -> bool:
        """Whether sums really span the workers."""
        return self._store is not None

    def sum(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """The element-wise sum of ``values`` over all workers (float64)."""
        array = np.asarray(values, dtype=np.float64).ravel()
        if self._store is None or array.size == 0:
            return array.copy()
        from mxnet import nd

        key = _REDUCE_KEYS.get(array.size)
        if key is None:
            key = _REDUCE_KEY_BASE + len(_REDUCE_KEYS)
            self._store.init(key, nd.zeros(array.size, dtype="float64"))  # collective (a barrier)
            _REDUCE_KEYS[array.size] = key
        self._store.push(key, nd.array(array, dtype="float64"))
        out = nd.zeros(array.size, dtype="float64")
        self._store.pull(key, out=out)
        return out.asnumpy()

    def mean(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """The element-wise mean over all workers."""
        return self.sum(values) / (self.info.num_workers if self.active else 1)


# ---------------------------------------------------------------- the launcher
class JobFailed(GluonRobustError):
    """A process of a launched job failed (or the job ran out of time); the job has been stopped.

    Attributes
    ----------
    exit_code : int
        The status the launcher should exit with: the failed process's status,
        128 + signal for a killed one, 124 for a timeout.
    pids : list of int
        Every process the launcher started (all stopped by now).
    """

    def __init__(self, message: str, exit_code: int, pids: Sequence[int]) -> None:
        super().__init__(message)
        self.exit_code = int(exit_code)
        self.pids = list(pids)


@dataclass
class JobResult:
    """What :func:`launch` returns when every worker succeeded."""

    seconds: float
    pids: List[int] = field(default_factory=list)
    worker_pids: List[int] = field(default_factory=list)


@dataclass
class _Child:
    name: str
    role: str
    process: subprocess.Popen


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for the scheduler)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def dmlc_environment(role: str, *, num_workers: int, num_servers: int, host: str, port: int) -> Dict[str, str]:
    """The ``DMLC_*`` variables of one process of a job whose scheduler listens on ``host:port``."""
    if role not in ("scheduler", "server", "worker"):
        raise ConfigError(f"role must be scheduler, server or worker, got {role!r}")
    return {"DMLC_ROLE": role, "DMLC_PS_ROOT_URI": str(host), "DMLC_PS_ROOT_PORT": str(int(port)),
            "DMLC_NUM_SERVER": str(int(num_servers)), "DMLC_NUM_WORKER": str(int(num_workers))}


def _parent_death_signal() -> Optional[Callable[[], None]]:
    """On Linux, a ``preexec_fn`` that makes the child receive SIGTERM when the launcher dies
    (``PR_SET_PDEATHSIG``), so that no role outlives a killed launcher; None elsewhere.

    ``prctl`` is looked up here, in the parent: the child between fork and exec
    only calls it (no import, no allocation that could wait on another thread's lock).
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    request, sig = 1, int(signal.SIGTERM)  # PR_SET_PDEATHSIG

    def set_signal() -> None:
        prctl(request, sig)

    return set_signal


def _status_text(code: int) -> Tuple[str, int]:
    """A child's return code as words and as the launcher's exit status."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}", 128 - code
    return f"exited with status {code}", code


def _stop(children: Sequence[_Child], grace: float) -> None:
    """SIGTERM every child's process group, then SIGKILL what is left after ``grace`` seconds; reap them all."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        alive = [c for c in children if c.process.poll() is None]
        for child in alive:
            try:
                os.killpg(child.process.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while any(c.process.poll() is None for c in alive) and time.monotonic() < deadline:
            time.sleep(0.05)
    for child in children:  # reap
        try:
            child.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) did not stop", child.name, child.process.pid)


def launch(
    command: Sequence[str],
    *,
    num_workers: int,
    num_servers: int = 1,
    host: str = "127.0.0.1",
    port: Optional[int] = None,
    timeout: Optional[float] = None,
    grace: float = 5.0,
    env: Optional[Mapping[str, str]] = None,
    poll: float = 0.1,
) -> JobResult:
    """Run a parameter-server job on this host: a scheduler, ``num_servers`` servers and ``num_workers`` copies of ``command``.

    Every process gets the ``DMLC_*`` environment (:func:`dmlc_environment`)
    and its own process group. The launcher polls them all; the job succeeds
    when every worker exits with status 0 (the servers and the scheduler stop
    by themselves once rank 0 closes its store, or are stopped ``grace``
    seconds after the last worker). The first
    non-zero exit of any process, or the ``timeout``, stops every process
    group (SIGTERM, then SIGKILL after ``grace`` seconds) and raises
    :class:`JobFailed` naming the culprit, so a dead worker never leaves its
    peers blocked in ps-lite.

    Parameters
    ----------
    command : sequence of str
        The worker command, e.g. ``[sys.executable, "scripts/train_adversarial.py", "--kvstore", "dist_sync", ...]``.
    num_workers, num_servers : int
        Processes of each role (at least 1).
    host, port : str, int
        Where the scheduler listens (default: loopback and a free port).
    timeout : float, optional
        Seconds the whole job may take.
    grace : float
        Seconds between SIGTERM and SIGKILL when stopping.
    env : mapping, optional
        Extra environment for every process.
    poll : float
        Seconds between checks of the children.

    Returns
    -------
    JobResult

    Raises
    ------
    ConfigError
        Bad arguments (before anything starts).
    JobFailed
        A process failed or the job timed out; everything has been stopped.
    """
    command = [str(part) for part in command]
    if not command:
        raise ConfigError("launch needs a worker command after --")
    for name, value in (("num_workers", num_workers), ("num_servers", num_servers)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if timeout is not None:
        check_positive("timeout", timeout)
    check_positive("grace", grace, allow_zero=True)
    if port is not None:
        check_int("port", port, minimum=1, maximum=65535)
    host = check_host("host", host)
    port = int(port) if port is not None else free_port(host)
    base = dict(os.environ)
    base.update(env or {})
    if host in ("127.0.0.1", "localhost"):
        base.setdefault("DMLC_NODE_HOST", "127.0.0.1")  # every role announces loopback: no network needed
    roles = ([("scheduler", "scheduler", [sys.executable, "-c", "import mxnet"])]
             + [(f"server #{i}", "server", [sys.executable, "-c", "import mxnet"]) for i in range(num_servers)]
             + [(f"worker #{i}", "worker", command) for i in range(num_workers)])
    children: List[_Child] = []
    preexec = _parent_death_signal()
    started = time.monotonic()
    logger.info("launching %d worker(s) and %d server(s), scheduler at %s:%d: %s",
                num_workers, num_servers, host, port, " ".join(command))
    try:
        for name, role, argv in roles:
            child_env = dict(base, **dmlc_environment(role, num_workers=num_workers, num_servers=num_servers,
                                                       host=host, port=port))
            try:
                # A session of its own: stopping the job signals the whole process group of each child.
                process = subprocess.Popen(argv, env=child_env, start_new_session=True, preexec_fn=preexec)
            except OSError as err:
                raise JobFailed(f"cannot start {name} ({' '.join(argv)}): {err.strerror or err}", 127,
                                [c.process.pid for c in children]) from None
            children.append(_Child(name, role, process))
            logger.debug("%s: pid %d", name, process.pid)
        pids = [c.process.pid for c in children]
        workers = [c for c in children if c.role == "worker"]
        finished_at: Optional[float] = None
        while True:
            for child in children:
                code = child.process.poll()
                if code is None or code == 0:
                    continue
                what, status = _status_text(code)
                raise JobFailed(
                    f"{child.name} (pid {child.process.pid}) {what} after {time.monotonic() - started:.1f} s; "
                    f"stopped the job ({num_workers} worker(s), {num_servers} server(s), scheduler)", status, pids)
            now = time.monotonic()
            if all(c.process.poll() == 0 for c in workers):
                finished_at = finished_at or now
                if all(c.process.poll() is not None for c in children) or now - finished_at > grace:
                    break
            if timeout is not None and now - started > timeout:
                raise JobFailed(f"the job ran past its timeout of {timeout:g} s; stopped it "
                                f"({num_workers} worker(s), {num_servers} server(s), scheduler)", 124, pids)
            time.sleep(poll)
    finally:
        _stop(children, grace)
    seconds = time.monotonic() - started
    logger.info("job finished in %.1f s", seconds)
    return JobResult(seconds=seconds, pids=pids, worker_pids=[c.process.pid for c in workers])

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
``python -c "import mxnet"``. :func:`launch` (in :mod:`gluon_robust.launcher`) starts all of them on one host
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
from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np

from .errors import ConfigError
from .launcher import JobFailed, JobResult, dmlc_environment, free_port, launch

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

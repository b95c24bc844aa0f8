"""Evaluation, certification and attack runs on a Dask distributed cluster: chunks scheduled, retried and merged.

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
without it never imports Dask. ``attack --cluster`` runs the chunks of an
attack the same way: the per-sample arrays of the chunks, concatenated in
order, are those of the single-process ``attack``.

The package's modules: :mod:`.connection` (``--cluster``, the client),
:mod:`.settings` (what a chunk runs with), :mod:`.worker` (the model cached
per worker, the fingerprint check), :mod:`.state` (the state directory),
:mod:`.driver` (chunks, submission, progress, timing) and one module per
command: :mod:`.evaluate`, :mod:`.certify`, :mod:`.attack`.
"""

from __future__ import annotations

from .attack import attack_on_cluster, run_attack_chunk
from .certify import certify_on_cluster, run_certify_chunk
from .connection import (
    CONNECT_TIMEOUT, MAX_LOCAL_WORKERS, THREAD_VARIABLES, ClusterError, ClusterSpec, connect, dashboard, parse_cluster,
    local_workers, oversubscription_warning, worker_environment, worker_threads,
)
from .driver import default_chunk_size
from .evaluate import evaluate_on_cluster, run_chunk
from .settings import AttackSettings, CertifySettings, EvaluateSettings, Loader
from .state import STATE_DIR

__all__ = [
    "ClusterSpec", "ClusterError", "EvaluateSettings", "Loader", "parse_cluster", "worker_threads",
    "worker_environment", "connect", "evaluate_on_cluster", "run_chunk", "default_chunk_size", "STATE_DIR",
    "CertifySettings", "certify_on_cluster", "run_certify_chunk", "AttackSettings", "attack_on_cluster",
    "run_attack_chunk", "CONNECT_TIMEOUT", "MAX_LOCAL_WORKERS", "THREAD_VARIABLES", "dashboard",
    "oversubscription_warning", "local_workers",
]

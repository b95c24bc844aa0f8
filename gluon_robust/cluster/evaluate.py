"""``evaluate --cluster``: the shards of ``evaluate --shard K/N``, run as chunks on Dask and merged.

Each chunk is one :func:`~gluon_robust.evaluation.evaluate` of its shard on a
worker; the merge of the chunks
(:func:`~gluon_robust.evaluation.evaluate.merge_loaded`, the merge of
``merge-reports``) is the report of the single-process run: every field but
:data:`~gluon_robust.evaluation.report.TIMING_KEYS` is equal.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .connection import CONNECT_TIMEOUT, ClusterSpec
from .driver import ChunkPlan, chunk_slices, default_chunk_size, run_chunks
from .settings import EvaluateSettings, Loader
from .state import STATE_DIR, _chunk_dir, _write_chunk
from .worker import check_parts, checked_load

logger = logging.getLogger(__name__)


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
    from ..evaluation.evaluate import _evaluate

    start = time.perf_counter()
    entry, worker = checked_load(loader, expected)
    if probe is not None:
        entry.probes.setdefault(tuple(probe[0]), probe[1])
    report, examples = _evaluate(entry.model, entry.source, shard=(k, n), progress=False, probe_cache=entry.probes,
                                 weights=entry.weights, **settings.kwargs())
    check_parts(report["fingerprint"], expected, worker, k, n)
    entry.chunks += 1
    report["chunk"] = {"worker": worker, "pid": os.getpid(), "seconds": round(time.perf_counter() - start, 3)}
    return {"report": report, "examples": examples}


def _finished(state: Path, k: int, n: int, expected: Dict[str, str]) -> Optional[Tuple[Any, ...]]:
    """The loaded chunk ``k`` of ``n`` when the state holds it (and its fingerprint is the run's), else None."""
    from ..evaluation.evaluate import load_shard

    directory = _chunk_dir(state, k, n)
    if not (directory / "report.json").is_file():
        return None
    report, examples, fingerprint = load_shard(directory)
    found = fingerprint.to_dict()
    if any(found[part] != expected[part] for part in expected) or report["shard"]["k"] != k:
        logger.warning("chunk %d of %d in %s belongs to another run: it is run again", k, n, directory)
        return None
    return report, examples, fingerprint, str(directory)


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
    start = time.perf_counter()
    plan = functools.partial(_plan, settings=settings, chunk_size=chunk_size)
    run = run_chunks(loader, cluster=cluster, out_dir=out_dir, plan=plan, task=run_chunk, finished=_finished, store=_store, verb="evaluate", resume=resume,
                     chunk_size=chunk_size, progress=progress, announce=announce, on_chunk=on_chunk, timeout=timeout)
    loaded = [run.done[k] for k in range(len(run.plan.slices))]
    records = [{**(report.get("chunk") or {}), "n": report["n"]} for report, _, _, _ in loaded]
    return _publish(run.out, loaded, run.plan.context["fingerprint"], args, start, run.record(records))


def _store(state: Path, k: int, n: int, result: Dict[str, Any]) -> Tuple[Path, Tuple[Any, ...]]:
    """Write a finished chunk as a shard directory and load it back as :func:`_finished` does."""
    from ..evaluation.evaluate import load_shard

    directory = _write_chunk(state, k, n, result["report"], result["examples"])
    report, examples, chunk_fingerprint = load_shard(directory)
    return directory, (report, examples, chunk_fingerprint, str(directory))


def _plan(loader: Loader, settings: EvaluateSettings, chunk_size: Optional[int]) -> ChunkPlan:
    """The client's view of the run: its chunks, their fingerprints, the sanity probe and the state's identity."""
    from ..evaluation.evaluate import prepare, run_fingerprint, sanity_probe
    from ..fingerprint import data_fingerprint

    model, source = loader.load()
    prepared = prepare(model, source, **settings.prepare_kwargs())
    source = prepared.source
    fingerprint = run_fingerprint(model, source, prepared.built, stages=prepared.stages, recipe=prepared.recipe,
                                  eps=prepared.eps, norm=prepared.norm, seed=settings.seed,
                                  batch_size=prepared.batch_size)
    total = len(source)
    size = chunk_size or default_chunk_size(total, prepared.batch_size)
    slices = chunk_slices(total, size)
    expected = [{"weights": fingerprint.weights, "recipe": fingerprint.recipe,
                 "data": data_fingerprint(source.subset(part), prepared.batch_size)} for part in slices]
    model_name = model.describe() if hasattr(model, "describe") else type(model).__name__
    probe = ((prepared.norm, int(settings.seed), settings.probe_size),
             sanity_probe(model, source, norm=prepared.norm, seed=settings.seed, probe_size=settings.probe_size))
    identity = {**fingerprint.to_dict(), "batch_size": prepared.batch_size, "n": total, "chunks": len(slices),
                "chunk_size": size, "model": model_name, "settings": asdict(settings)}
    return ChunkPlan(settings=settings, slices=slices, size=size, expected=expected, identity=identity,
                     extra=(probe,), context={"fingerprint": fingerprint})


def _publish(out: Path, loaded: List[Tuple[Any, ...]], fingerprint: Any, args: Optional[Dict[str, Any]],
             start: float, cluster: Dict[str, Any]) -> Dict[str, Any]:
    """Merge the chunks into the run's report, write it in place of the state, and return it."""
    from ..evaluation.evaluate import merge_loaded
    from ..evaluation.report import write_report
    from ..reporting import staged_output

    merged, examples = merge_loaded(loaded)
    merged.pop("merged_shards", None)
    merged["fingerprint"] = fingerprint.to_dict()  # the whole run's: the same data, weights and recipe digests
    merged["args"] = json.loads(json.dumps(args or {}, default=str))
    merged["seconds"] = round(time.perf_counter() - start, 3)
    merged["cluster"] = cluster
    with staged_output(out, replaces=(STATE_DIR,)) as stage:  # the finished run's chunks go with it
        write_report(stage, merged, examples, bounds=tuple(merged["bounds"]))
    logger.info("report: %s", out / "report.html")
    return merged

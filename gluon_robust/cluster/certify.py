"""``certify --cluster``: randomized smoothing (Cohen et al. 2019) in chunks on Dask, the single-process report."""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .connection import CONNECT_TIMEOUT, ClusterSpec
from .driver import ChunkPlan, arrays_plan, arrays_store, default_chunk_size, run_chunks
from .settings import CertifySettings, Loader
from .state import read_arrays_chunk
from .worker import checked_slice, chunk_record


def run_certify_chunk(loader: Loader, settings: CertifySettings, k: int, n: int,
                      expected: Dict[str, str]) -> Dict[str, Any]:
    """Certify chunk ``k`` of ``n`` of the source on this worker: the per-sample arrays and the chunk's record.

    Refuses (:class:`~gluon_robust.errors.ConfigError`, or ``DataError`` for
    the data) a worker whose weights, data slice or settings differ from the
    client's ``expected`` fingerprint parts.
    """
    from ..evaluation.certify import certify_points

    start = time.perf_counter()
    entry, worker, part = checked_slice(loader, settings, k, n, expected)
    arrays = certify_points(entry.model, part, progress=False, **asdict(settings))
    return {"arrays": arrays, "chunk": chunk_record(k, n, worker, start, len(arrays["label"]),
                                                    fingerprint=dict(expected))}


def _certify_done(state: Path, k: int, n: int, expected: Dict[str, str]) -> Optional[Tuple[Dict[str, Any], Dict]]:
    """The finished certify chunk ``k`` of ``n`` in the state (when its fingerprint is the run's), else None."""
    from ..evaluation.certify import POINT_ARRAYS

    return read_arrays_chunk(state, k, n, expected, POINT_ARRAYS, "certify chunk")


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
    (:func:`~gluon_robust.evaluation.certify.certify_report`). Chunks are written
    to ``out_dir/cluster.state/`` as they arrive (``--resume`` keeps them);
    the caller publishes the report and removes the state (see ``certify --cluster``).

    Returns
    -------
    dict
        The report of :func:`~gluon_robust.evaluation.certify.certify_source`
        plus ``cluster`` (chunks, per-worker timing) and ``fingerprint``.
    """
    from ..evaluation.certify import POINT_ARRAYS, certify_report

    start = time.perf_counter()
    plan = functools.partial(_plan, settings=settings, chunk_size=chunk_size, max_memory=max_memory)
    run = run_chunks(loader, cluster=cluster, out_dir=out_dir, plan=plan, task=run_certify_chunk,
                     finished=_certify_done, store=arrays_store(True), verb="certify", resume=resume,
                     chunk_size=chunk_size, progress=progress, announce=announce, on_chunk=on_chunk, timeout=timeout)
    context, n_chunks = run.plan.context, len(run.plan.slices)
    parts = [run.done[k][1] for k in range(n_chunks)]
    arrays = {name: np.concatenate([p[name] for p in parts]) for name in POINT_ARRAYS if name != "clean_correct"}
    arrays["clean_correct"] = np.array(sum(int(p["clean_correct"]) for p in parts), np.int64)
    source = context["source"]
    report = certify_report(arrays, model=context["model"], data=getattr(source, "name", type(source).__name__),
                            radii=radii, seconds=time.perf_counter() - start, **asdict(run.plan.settings))
    report["fingerprint"] = context["fingerprint"].to_dict()
    report["batch_size_source"] = context["batch_source"]
    report["cluster"] = run.record([run.done[k][0] for k in range(n_chunks)])
    return report


def _plan(loader: Loader, settings: CertifySettings, chunk_size: Optional[int],
          max_memory: Optional[int]) -> ChunkPlan:
    """The client's side: the model, the source, the batch size resolved as certify does, and the chunks."""
    from ..memory import resolve_batch_size

    model, source = loader.load()
    batch_source = "given"
    if settings.batch_size is None:  # the largest forward-only batch that fits, at most 1000
        resolved, batch_source = resolve_batch_size(model, source.sample_shape, None, max_memory, cap=1000,
                                                    backward=False)
        settings = replace(settings, batch_size=resolved)
    size = chunk_size or default_chunk_size(len(source), 64)
    return arrays_plan(model, source, settings, command="certify", size=size, batch_source=batch_source)

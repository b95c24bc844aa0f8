"""``certify --cluster``: randomized smoothing (Cohen et al. 2019) in chunks on Dask, the single-process report."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .connection import CONNECT_TIMEOUT, ClusterSpec, connect, dashboard
from .driver import (
    _preload_all, _run_with_progress, begin, chunk_slices, chunk_submitter, cluster_record, default_chunk_size,
    start_run,
)
from .settings import CertifySettings, Loader
from .state import read_arrays_chunk, write_arrays_chunk
from .worker import check_parts, checked_load, chunk_record


def run_certify_chunk(loader: Loader, settings: CertifySettings, k: int, n: int,
                      expected: Dict[str, str]) -> Dict[str, Any]:
    """Certify chunk ``k`` of ``n`` of the source on this worker: the per-sample arrays and the chunk's record.

    Refuses (:class:`~gluon_robust.errors.ConfigError`, or ``DataError`` for
    the data) a worker whose weights, data slice or settings differ from the
    client's ``expected`` fingerprint parts.
    """
    from ..commands.certify import certify_points
    from ..evaluation.evaluate import shard_slice
    from ..fingerprint import data_fingerprint, recipe_fingerprint

    start = time.perf_counter()
    entry, worker = checked_load(loader, expected)
    part = entry.source.subset(shard_slice(len(entry.source), (k, n)))
    check_parts({"data": data_fingerprint(part), "recipe": recipe_fingerprint(settings.identity())}, expected,
                worker, k, n)
    arrays = certify_points(entry.model, part, progress=False, **asdict(settings))
    return {"arrays": arrays, "chunk": chunk_record(k, n, worker, start, len(arrays["label"]),
                                                    fingerprint=dict(expected))}


def _certify_done(state: Path, k: int, n: int, expected: Dict[str, str]) -> Optional[Tuple[Dict[str, Any], Dict]]:
    """The finished certify chunk ``k`` of ``n`` in the state (when its fingerprint is the run's), else None."""
    from ..commands.certify import POINT_ARRAYS

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
    (:func:`~gluon_robust.commands.certify.certify_report`). Chunks are written
    to ``out_dir/cluster.state/`` as they arrive (``--resume`` keeps them);
    the caller publishes the report and removes the state (see ``certify --cluster``).

    Returns
    -------
    dict
        The report of :func:`~gluon_robust.commands.certify.certify_source`
        plus ``cluster`` (chunks, per-worker timing) and ``fingerprint``.
    """
    from ..commands.certify import POINT_ARRAYS, certify_report

    spec, announce = begin(cluster, chunk_size, announce)
    start = time.perf_counter()
    with connect(spec, timeout=timeout) as client:
        link = dashboard(client)
        preloads = _preload_all(client, loader)
        model, source = loader.load()
        settings, batch_source = _resolved(model, source, settings, max_memory)
        size = chunk_size or default_chunk_size(len(source), 64)
        slices = chunk_slices(len(source), size)
        fingerprint, expected = _fingerprints(model, source, slices, settings.identity())
        identity = {**fingerprint.to_dict(), "command": "certify", "n": len(source), "chunks": len(slices),
                    "chunk_size": size}
        out, state, done, reused, pending = start_run(
            client, spec, link=link, out_dir=out_dir, identity=identity, resume=resume, expected=expected,
            finished=_certify_done, announce=announce, size=size)

        def store(k: int, result: Dict[str, Any]) -> Path:
            done[k] = (result["chunk"], result["arrays"])
            return write_arrays_chunk(state, k, len(slices), result["arrays"], result["chunk"])

        submit = chunk_submitter(client, run_certify_chunk, loader, settings, expected)
        _run_with_progress(client, spec, submit, store, pending=pending, slices=slices, reused=reused, done=done,
                           state=state, preloads=preloads, on_chunk=on_chunk, progress=progress, verb="certify")
    parts = [done[k][1] for k in range(len(slices))]
    arrays = {name: np.concatenate([p[name] for p in parts]) for name in POINT_ARRAYS if name != "clean_correct"}
    arrays["clean_correct"] = np.array(sum(int(p["clean_correct"]) for p in parts), np.int64)
    report = certify_report(arrays, model=model, data=getattr(source, "name", type(source).__name__),
                            radii=radii, seconds=time.perf_counter() - start, **asdict(settings))
    report["fingerprint"] = fingerprint.to_dict()
    report["batch_size_source"] = batch_source
    report["cluster"] = cluster_record(spec, link, size, slices, reused, [done[k][0] for k in range(len(slices))])
    return report


def _resolved(model: Any, source: Any, settings: CertifySettings,
              max_memory: Optional[int]) -> Tuple[CertifySettings, str]:
    """``settings`` with a batch size, as certify does: the largest forward-only batch that fits, at most 1000."""
    from ..memory import resolve_batch_size

    if settings.batch_size is not None:
        return settings, "given"
    resolved, batch_source = resolve_batch_size(model, source.sample_shape, None, max_memory, cap=1000, backward=False)
    return replace(settings, batch_size=resolved), batch_source


def _fingerprints(model: Any, source: Any, slices: Sequence[slice],
                  recipe_identity: Dict[str, Any]) -> Tuple[Any, list]:
    """The run's fingerprint and each chunk's parts (weights, recipe, data of its slice)."""
    from ..fingerprint import RunFingerprint, combine, data_fingerprint, recipe_fingerprint, weights_fingerprint

    weights = weights_fingerprint(model)
    recipe = recipe_fingerprint(recipe_identity)
    expected = [{"weights": weights, "recipe": recipe, "data": data_fingerprint(source.subset(part))}
                for part in slices]
    fingerprint = RunFingerprint(weights=weights, data=combine([e["data"] for e in expected]), recipe=recipe)
    return fingerprint, expected

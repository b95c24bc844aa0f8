"""``attack --cluster``: one attack over a source, in chunks on Dask; the outputs of the single-process ``attack``.

Each chunk attacks its slice on a worker (the model cached there, see
:mod:`.worker`) and sends back its per-sample arrays and adversarial
examples. Attacks draw their random numbers per sample (from the seed and
the source index, see :func:`~gluon_robust.attacks.base.sample_generators`),
so the chunks' arrays, concatenated in order, are those of
:func:`~gluon_robust.jobs.run_attack_job`, and the files written from them
(``adversarial.npz``, ``per_sample.csv``, ``summary.json``, ``images/``) are
the same; ``summary.json`` adds ``cluster`` (chunks, per-worker timing, the
run's fingerprint) and its ``seconds`` is the client's.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .connection import CONNECT_TIMEOUT, ClusterError, ClusterSpec
from .driver import ChunkPlan, ChunkRun, arrays_plan, arrays_store, default_chunk_size, run_chunks
from .settings import AttackSettings, Loader
from .state import STATE_DIR, read_arrays_chunk
from .worker import checked_slice, chunk_record

logger = logging.getLogger(__name__)

#: The arrays of an attack chunk: the per-sample arrays, then the adversarial examples.
_CHUNK_ARRAYS = ("y", "index", "clean_pred", "adv_pred", "success", "distance", "target", "attacked", "broken",
                 "queries", "x_adv")


def run_attack_chunk(loader: Loader, settings: AttackSettings, k: int, n: int,
                     expected: Dict[str, str]) -> Dict[str, Any]:
    """Attack chunk ``k`` of ``n`` of the source on this worker: its per-sample arrays, ``x_adv`` and record.

    A worker whose weights, attack settings, version or data slice differ
    from the client's ``expected`` fingerprint parts is refused
    (:class:`~gluon_robust.errors.ConfigError`, ``DataError`` for the data).
    """
    from ..attack_outputs import AdversarialSink, MemoryWriter, attack_rows

    start = time.perf_counter()
    entry, worker, part = checked_slice(loader, settings, k, n, expected)
    writer = MemoryWriter(part.sample_shape)
    sink = AdversarialSink(writer, len(part), None, 0, entry.model.bounds)
    arrays = attack_rows(entry.model, part, settings.make(), attack_name=settings.attack,
                         batch_size=int(settings.batch_size), target_mode=settings.target_mode, seed=settings.seed,
                         sink=sink, progress=False)
    arrays["x_adv"] = writer.array()
    entry.chunks += 1
    return {"arrays": arrays, "chunk": chunk_record(k, n, worker, start, len(arrays["y"]), fingerprint=dict(expected))}


def _attack_done(state: Path, k: int, n: int, expected: Dict[str, str]) -> Optional[Dict[str, Any]]:
    """The record of the finished attack chunk ``k`` of ``n`` in the state (when it is the run's), else None."""
    found = read_arrays_chunk(state, k, n, expected, _CHUNK_ARRAYS, "attack chunk")
    return None if found is None else found[0]


def attack_on_cluster(
    loader: Loader,
    settings: AttackSettings,
    *,
    max_images: int = 100,
    cluster: ClusterSpec | str,
    out_dir: str | Path,
    resume: bool = False,
    chunk_size: Optional[int] = None,
    max_memory: Optional[int] = None,
    progress: bool = True,
    announce: Optional[Callable[[str], None]] = None,
    on_chunk: Optional[Callable[[int, Path], None]] = None,
    timeout: float = CONNECT_TIMEOUT,
) -> Dict[str, Any]:
    """Attack in chunks on a Dask cluster and write the outputs of :func:`~gluon_robust.jobs.run_attack_job`.

    ``cluster``, ``out_dir``, ``resume``, ``chunk_size``, ``progress``,
    ``announce``, ``on_chunk`` and ``timeout`` are those of
    :func:`~gluon_robust.cluster.evaluate_on_cluster`; ``loader`` builds the
    model (with its defences) and the whole source on the client and on every
    worker; ``settings`` holds the attack, its options, the targets, the seed
    and the batch size (None: resolved here from ``max_memory``, as ``attack``
    does); ``max_images`` PNG pairs are written for image data.

    Returns
    -------
    dict
        The summary of :func:`~gluon_robust.jobs.run_attack_job`, with ``cluster``
        (chunks, per-worker timing, the run's fingerprint).

    Raises
    ------
    ClusterError
        If the scheduler cannot be reached or Dask gives up on a chunk.
    ConfigError
        For bad settings, a worker whose weights or settings differ from the
        client's (``DataError`` for its data slice), or, with ``resume``, a state of another run.
    """
    start = time.perf_counter()
    plan = functools.partial(_plan, settings=settings, chunk_size=chunk_size, max_memory=max_memory)
    run = run_chunks(loader, cluster=cluster, out_dir=out_dir, plan=plan, task=run_attack_chunk,
                     finished=_attack_done, store=arrays_store(False), verb="attack", resume=resume,
                     chunk_size=chunk_size, progress=progress, announce=announce, on_chunk=on_chunk, timeout=timeout)
    record = run.record([run.done[k] for k in range(len(run.plan.slices))])
    record["fingerprint"] = run.plan.context["fingerprint"].to_dict()
    return _publish(run, max_images=max_images, start=start, record=record)


def _plan(loader: Loader, settings: AttackSettings, chunk_size: Optional[int], max_memory: Optional[int]) -> ChunkPlan:
    """The client's side, checked as ``attack`` checks it; the settings get the batch size every chunk uses."""
    from ..data import as_source, check_fits
    from ..memory import resolve_batch_size
    from ..validation import check_eps

    model, source = loader.load()
    source = as_source(source)
    attack = settings.make()
    check_fits(model, source)
    check_eps("eps", attack.eps, attack.norm.name, model.bounds, source.sample_shape)
    batch_size, batch_source = resolve_batch_size(model, source.sample_shape, settings.batch_size, max_memory)
    size = chunk_size or default_chunk_size(len(source), batch_size)
    return arrays_plan(model, source, replace(settings, batch_size=batch_size), command="attack", size=size,
                       batch_source=batch_source)


def _publish(run: ChunkRun, *, max_images: int, start: float, record: Dict[str, Any]) -> Dict[str, Any]:
    """Write the run's files from its chunks, in place of the state, and return its summary."""
    from ..attack_outputs import NPZ_ARRAYS, attack_summary, class_names, write_per_sample
    from ..evaluation import sanity
    from ..io import StreamingNpzWriter, atomic_write_json
    from ..reporting import staged_output

    out, settings, context = run.out, run.plan.settings, run.plan.context
    model, source = context["model"], context["source"]
    attack = settings.make()
    names = class_names(model)
    with staged_output(out, replaces=(STATE_DIR,)) as stage:  # the finished run's chunks go with it
        images = stage / "images" if source.sample_shape[0] in (1, 3) and max_images > 0 else None
        if images is not None:
            images.mkdir()
        writer = StreamingNpzWriter(stage / "adversarial.npz", "x_adv", (len(source),) + tuple(source.sample_shape),
                                    np.float32)
        try:
            arrays = _stream_chunks(run, writer, images, max_images, names)
        except BaseException:
            writer.abort()
            raise
        writer.close(**{key: arrays[key] for key in NPZ_ARRAYS})
        summary = attack_summary(arrays, model=model, data=source.name, attack=attack, attack_name=settings.attack,
                                 options=dict(settings.options), target_mode=settings.target_mode, seed=settings.seed,
                                 batch_size=int(settings.batch_size), batch_source=context["batch_source"],
                                 seconds=time.perf_counter() - start)
        summary["cluster"] = record
        atomic_write_json(stage / "summary.json", summary)
        write_per_sample(stage / "per_sample.csv", arrays, names)
    sanity.emit(summary["warnings"])
    logger.info("%s on %s: clean accuracy %.2f%%, robust accuracy %.2f%%, success rate %.2f%% (%d attacked), "
                "%.1f s -> %s", settings.attack, record["spec"], 100 * summary["clean_accuracy"],
                100 * summary["robust_accuracy"], 100 * summary["success_rate"], summary["attacked"],
                summary["seconds"], out)
    return summary


def _stream_chunks(run: ChunkRun, writer: Any, images: Optional[Path], max_images: int,
                   names: Optional[List[str]]) -> Dict[str, np.ndarray]:
    """Pass each chunk's ``x_adv`` to ``writer`` in order (with the PNG pairs of the first samples), and return
    the concatenated per-sample arrays."""
    from ..attack_outputs import SAMPLE_ARRAYS, save_pair

    state, slices, source = run.state, run.plan.slices, run.plan.context["source"]
    parts = []
    for k, part in enumerate(slices):
        found = read_arrays_chunk(state, k, len(slices), run.plan.expected[k], _CHUNK_ARRAYS, "attack chunk")
        if found is None:
            raise ClusterError(f"attack chunk {k} of {len(slices)} vanished from {state} before it was written out; "
                               f"run the command again with --resume")
        arrays = found[1]
        writer.write(arrays["x_adv"])
        stop = min(part.stop, max_images)
        if images is not None and part.start < stop:
            clean = next(iter(source.subset(slice(part.start, stop)).batches(stop - part.start))).x
            for j in np.flatnonzero(arrays["attacked"][:stop - part.start]):
                save_pair(images, int(arrays["index"][j]), int(arrays["y"][j]), int(arrays["adv_pred"][j]), clean[j],
                          arrays["x_adv"][j], run.plan.context["model"].bounds, names)
        parts.append({name: arrays[name] for name in SAMPLE_ARRAYS})
    return {name: np.concatenate([p[name] for p in parts]) for name in SAMPLE_ARRAYS}

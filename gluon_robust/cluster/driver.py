"""The client side shared by every command: chunks, the state, the submission, one progress bar, per-worker timing."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import GluonRobustError
from .connection import CONNECT_TIMEOUT, ClusterError, ClusterSpec, connect, dashboard, parse_cluster
from .settings import Loader
from .state import _canonical, _kept_chunks, _open_state, write_arrays_chunk
from .worker import _preload

logger = logging.getLogger(__name__)


def default_chunk_size(n: int, batch_size: int) -> int:
    """Samples per chunk when none is given: one batch, but at most ``ceil(n / 8)`` so that a small run has 8 chunks.

    It depends only on the run (never on the number of workers), so a resume
    with another cluster finds the same chunks.
    """
    return max(1, min(int(batch_size), math.ceil(int(n) / 8)))


@dataclass
class ChunkPlan:
    """What the client prepares before the chunks go out (see :func:`run_chunks`).

    Attributes
    ----------
    settings : object
        Sent with every chunk (the command's settings, e.g. with a resolved batch size).
    slices : list of slice
        The chunks (see :func:`chunk_slices`).
    size : int
        Samples per chunk.
    expected : list of dict
        Each chunk's fingerprint parts: ``weights``, ``recipe`` and ``data`` of its slice.
    identity : dict
        What the state directory must match on ``--resume``.
    extra : tuple
        Further arguments of the chunk task.
    context : dict
        Whatever the command keeps for its outputs (the model, the run's fingerprint...).
    """

    settings: Any
    slices: List[slice]
    size: int
    expected: List[Dict[str, str]]
    identity: Dict[str, Any]
    extra: Tuple[Any, ...] = ()
    context: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ChunkRun:
    """A finished run of :func:`run_chunks`: its plan, where it ran, its state and every chunk's stored value."""

    plan: ChunkPlan
    spec: ClusterSpec
    link: str
    out: Path
    state: Path
    done: Dict[int, Any]
    reused: List[int]

    def record(self, records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        """The report's ``cluster`` field, from each chunk's ``worker``, ``pid``, ``seconds`` and ``n`` (samples)."""
        return cluster_record(self.spec, self.link, self.plan.size, self.plan.slices, self.reused, records)


#: ``store(state, k, n_chunks, result) -> (directory, value)``: write a chunk's result, keep ``value`` in ``done``.
Store = Callable[[Path, int, int, Any], Tuple[Path, Any]]


def run_chunks(
    loader: Loader, *, cluster: ClusterSpec | str, out_dir: str | Path, plan: Callable[[Loader], ChunkPlan],
    task: Callable[..., Any], finished: Callable[[Path, int, int, Dict[str, str]], Any], store: Store, verb: str,
    resume: bool = False, chunk_size: Optional[int] = None, progress: bool = True,
    announce: Optional[Callable[[str], None]] = None, on_chunk: Optional[Callable[[int, Path], None]] = None,
    timeout: float = CONNECT_TIMEOUT,
) -> ChunkRun:
    """Run the chunks of a command on the cluster, keeping each result in ``OUT/cluster.state/`` as it arrives.

    Connects first (an unreachable scheduler fails before any work), starts
    the model's load on every worker, calls ``plan(loader)`` on the client,
    opens the state (with ``resume``, the chunks ``finished`` accepts are
    kept), announces the run (workers, chunks, dashboard), submits
    ``task(loader, settings, k, n_chunks, expected[k], *extra)`` for every
    other chunk and ``store``-s each result under one progress bar.
    """
    from ..validation import check_int

    spec = parse_cluster(cluster) if isinstance(cluster, str) else cluster
    if chunk_size is not None:
        check_int("chunk_size", chunk_size)
    announce = announce or (lambda line: logger.info("%s", line))
    with connect(spec, timeout=timeout) as client:
        link = dashboard(client)
        preloads = _preload_all(client, loader)  # the workers load while the client fingerprints
        chunks = plan(loader)
        out, state, done, reused, pending = start_run(
            client, spec, link=link, out_dir=out_dir, identity=chunks.identity, resume=resume,
            expected=chunks.expected, finished=finished, announce=announce, size=chunks.size)

        def keep(k: int, result: Any) -> Path:
            directory, done[k] = store(state, k, len(chunks.slices), result)
            return directory

        submit = chunk_submitter(client, task, loader, chunks.settings, chunks.expected, *chunks.extra)
        _run_with_progress(client, spec, submit, keep, pending=pending, slices=chunks.slices, reused=reused,
                           done=done, state=state, preloads=preloads, on_chunk=on_chunk, progress=progress, verb=verb)
    return ChunkRun(plan=chunks, spec=spec, link=link, out=out, state=state, done=done, reused=reused)


def chunk_slices(total: int, size: int) -> List[slice]:
    """The deterministic chunks of ``total`` samples, about ``size`` each: the shards ``k/N`` of ``evaluate --shard``."""
    from ..evaluation.evaluate import shard_slice

    n_chunks = max(1, math.ceil(total / size))
    return [shard_slice(total, (k, n_chunks)) for k in range(n_chunks)]


def arrays_plan(model: Any, source: Any, settings: Any, *, command: str, size: int, **context: Any) -> ChunkPlan:
    """The plan of a command whose chunks send back per-sample arrays (certify, attack).

    The recipe part of the fingerprint is ``settings.identity()``; each
    chunk's data part is the digest of its slice of ``source``.
    """
    from ..fingerprint import RunFingerprint, combine, data_fingerprint, recipe_fingerprint, weights_fingerprint

    slices = chunk_slices(len(source), size)
    weights = weights_fingerprint(model)
    recipe = recipe_fingerprint(settings.identity())
    expected = [{"weights": weights, "recipe": recipe, "data": data_fingerprint(source.subset(part))}
                for part in slices]
    fingerprint = RunFingerprint(weights=weights, data=combine([e["data"] for e in expected]), recipe=recipe)
    identity = {**fingerprint.to_dict(), "command": command, "n": len(source), "chunks": len(slices),
                "chunk_size": size}
    return ChunkPlan(settings=settings, slices=slices, size=size, expected=expected, identity=identity,
                     context=dict(context, model=model, source=source, fingerprint=fingerprint))


def arrays_store(keep_arrays: bool) -> Store:
    """``store`` for chunks that send back ``{"arrays": ..., "chunk": record}``: kept as ``(record, arrays)``, or
    as the record alone (``keep_arrays=False``: the arrays are read back from the state when needed)."""

    def store(state: Path, k: int, n: int, result: Dict[str, Any]) -> Tuple[Path, Any]:
        directory = write_arrays_chunk(state, k, n, result["arrays"], result["chunk"])
        return directory, (result["chunk"], result["arrays"]) if keep_arrays else result["chunk"]

    return store


def start_run(
    client: Any, spec: ClusterSpec, *, link: str, out_dir: str | Path, identity: Dict[str, Any], resume: bool,
    expected: Sequence[Dict[str, str]], finished: Callable[[Path, int, int, Dict[str, str]], Any],
    announce: Callable[[str], None], size: int,
) -> Tuple[Path, Path, Dict[int, Any], List[int], List[int]]:
    """Open the state of a run and say what is left: ``(out, state, done, reused, pending)``.

    ``done`` holds the chunks ``finished`` accepts from an interrupted run
    (only with ``resume``), ``reused`` their indices, ``pending`` the others.
    """
    from ..reporting import prepare_output_dir

    out = prepare_output_dir(out_dir)
    state = _open_state(out, identity, resume)
    done = _kept_chunks(state, expected, finished if resume else None)
    reused = sorted(done)
    pending = [k for k in range(len(expected)) if k not in done]
    _announce(announce, client, spec, pending, len(expected), size, len(reused), link)
    return out, state, done, reused, pending


def chunk_submitter(client: Any, task: Callable[..., Any], loader: Loader, settings: Any,
                    expected: Sequence[Dict[str, str]], *extra: Any) -> Callable[[int], Any]:
    """``submit(k)``: the future of ``task(loader, settings, k, n_chunks, expected[k], *extra)`` on the cluster."""
    tag = _tag(expected)
    n_chunks = len(expected)

    def submit(k: int) -> Any:
        return client.submit(task, loader, settings, k, n_chunks, expected[k], *extra, key=f"gluon-robust-{tag}-{k}",
                             pure=False)

    return submit


def cluster_record(spec: ClusterSpec, link: str, size: int, slices: Sequence[slice], reused: Sequence[int],
                   records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The report's ``cluster`` field: the spec, dashboard, chunks (slice, worker, seconds) and per-worker timing.

    ``records`` holds each chunk's ``worker``, ``pid``, ``seconds`` and ``n`` (samples), in chunk order.
    """
    return {
        "spec": spec.text, "dashboard": link, "chunk_size": size, "chunks": len(slices), "resumed_chunks": list(reused),
        "chunk_table": [{"k": k, "start": part.start, "stop": part.stop,
                         **{key: record.get(key) for key in ("worker", "pid", "seconds")}}
                        for k, (part, record) in enumerate(zip(slices, records))],
        "workers": _worker_timing(records),
    }


def _announce(announce: Callable[[str], None], client: Any, spec: ClusterSpec, pending: Sequence[int], n_chunks: int,
              size: int, reused: int, link: str) -> None:
    workers = len(client.scheduler_info().get("workers", {}))
    announce(f"cluster {spec.text}: {workers} worker(s), {len(pending)} of {n_chunks} chunk(s) of up to {size} "
             f"samples to run ({reused} finished before), dashboard {link}")



def _worker_timing(records: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Chunks, samples and seconds per worker, from the chunks' records."""
    workers: Dict[str, Dict[str, Any]] = {}
    for chunk in records:
        row = workers.setdefault(str(chunk.get("worker")), {"chunks": 0, "samples": 0, "seconds": 0.0})
        row["chunks"] += 1
        row["samples"] += int(chunk["n"])
        row["seconds"] = round(row["seconds"] + float(chunk.get("seconds", 0.0)), 3)
    for row in workers.values():
        row["samples_per_second"] = round(row["samples"] / row["seconds"], 3) if row["seconds"] > 0 else None
    return workers


def _run_with_progress(
    client: Any, spec: ClusterSpec, submit: Callable[[int], Any], store: Callable[[int, Any], Path], *,
    pending: List[int], slices: List[slice], reused: Sequence[int], done: Dict[int, Any], state: Path,
    preloads: Sequence[Any], on_chunk: Optional[Callable[[int, Path], None]], progress: bool, verb: str,
) -> None:
    """:func:`_run_pending` under one progress bar over all chunks; an interrupt says where the finished ones are."""
    from tqdm import tqdm

    from ..interrupts import set_hint

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


"""The worker side: a model loaded once per worker process, and the fingerprint check every chunk starts with."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from ..errors import ConfigError
from .settings import Loader

logger = logging.getLogger(__name__)

#: What a worker is told when its model or data differ from the client's.
REFUSED_FIX = "give every worker the same weights, data and version as the client (a stale copy on a shared disk?)"


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
    from ..fingerprint import weights_fingerprint

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



def checked_load(loader: Loader, expected: Dict[str, str]) -> Tuple["_Loaded", str]:
    """This worker's cached model and source, and its name; refused when its weights are not the client's.

    Raises
    ------
    ConfigError
        If the weights fingerprint of the loaded model differs from ``expected["weights"]``.
    """
    from ..fingerprint import short

    worker = _worker_name()
    entry = _load(loader, expected["weights"])
    if entry.weights != expected["weights"]:
        raise ConfigError(f"worker {worker} has different weights than the client (weights fingerprint "
                          f"{short(entry.weights)} vs {short(expected['weights'])}); refused: {REFUSED_FIX}")
    return entry, worker


def check_parts(found: Dict[str, str], expected: Dict[str, str], worker: str, k: int, n: int) -> None:
    """Refuse a chunk whose ``recipe`` or ``data`` fingerprint on this worker differs from the client's."""
    from ..fingerprint import mismatch

    for part in ("recipe", "data"):
        if found[part] != expected[part]:
            raise mismatch(part, expected[part], found[part], f"worker {worker} (chunk {k} of {n})", "the client",
                           REFUSED_FIX)


def checked_slice(loader: Loader, settings: Any, k: int, n: int,
                  expected: Dict[str, str]) -> Tuple["_Loaded", str, Any]:
    """This worker's model, its name and chunk ``k`` of ``n`` of the source, once all three fingerprint parts
    (weights, data of the slice, ``settings.identity()`` as the recipe) are the client's."""
    from ..evaluation.evaluate import shard_slice
    from ..fingerprint import data_fingerprint, recipe_fingerprint

    entry, worker = checked_load(loader, expected)
    part = entry.source.subset(shard_slice(len(entry.source), (k, n)))
    check_parts({"data": data_fingerprint(part), "recipe": recipe_fingerprint(settings.identity())}, expected,
                worker, k, n)
    return entry, worker, part


def chunk_record(k: int, n: int, worker: str, start: float, samples: int, **extra: Any) -> Dict[str, Any]:
    """A finished chunk's record: its index, worker, process, seconds and samples."""
    return {"k": k, "n_chunks": n, **extra, "worker": worker, "pid": os.getpid(),
            "seconds": round(time.perf_counter() - start, 3), "n": int(samples)}

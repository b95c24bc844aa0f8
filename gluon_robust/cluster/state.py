"""The run's state directory, ``OUT/cluster.state/``: its identity and the chunks written as they arrive.

A client that was stopped resumes with ``--resume``: the chunks found here
whose fingerprint is the run's are kept, and only the others run again.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError

logger = logging.getLogger(__name__)

#: The directory inside the output directory that holds the finished chunks while a cluster run goes on.
STATE_DIR = "cluster.state"

_IDENTITY = "identity.json"
_FIX = "remove it or run without --resume"

#: The files of a chunk of per-sample arrays (certify, attack): the arrays, then its record (the mark of completion).
_ARRAYS = "points.npz"
_RECORD = "chunk.json"


def _chunk_dir(state: Path, k: int, n: int) -> Path:
    return state / f"chunk-{k:05d}-of-{n:05d}"


def _write_chunk(state: Path, k: int, n: int, report: Dict[str, Any], examples: Dict[str, np.ndarray]) -> Path:
    """Write a finished chunk as a shard directory (examples first, ``report.json`` last: its mark of completion)."""
    from ..io import atomic_save_npz, atomic_write_json

    directory = _chunk_dir(state, k, n)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(directory / "examples.npz", **examples)
    atomic_write_json(directory / "report.json", report)
    return directory


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _open_state(out_dir: Path, identity: Dict[str, Any], resume: bool) -> Path:
    """The state directory, emptied without ``resume``; with it, refused when it belongs to another run."""
    from ..fingerprint import PARTS, mismatch
    from ..io import atomic_write_json

    state = out_dir / STATE_DIR
    what = f"the cluster state {state}"
    if resume and (state / _IDENTITY).is_file():
        try:
            saved = json.loads((state / _IDENTITY).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            saved = None
        if not isinstance(saved, dict):
            raise ConfigError(f"{what} has an unreadable {_IDENTITY}; {_FIX}")
        for part in PARTS:
            if saved.get(part) != identity[part]:
                raise mismatch(part, identity[part], str(saved.get(part)), what, "this run", _FIX)
        for key in sorted(set(saved) | set(identity)):
            if key not in PARTS and _canonical(saved.get(key)) != _canonical(identity.get(key)):
                raise ConfigError(f"{what} belongs to a run with another {key} (there {saved.get(key)!r}, here "
                                  f"{identity.get(key)!r}); {_FIX}")
        return state
    if resume:
        logger.warning("--resume: no cluster state in %s, starting from the beginning", state)
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    atomic_write_json(state / _IDENTITY, identity)
    return state


def _kept_chunks(state: Path, expected: Sequence[Dict[str, str]],
                 finished: Optional[Callable[[Path, int, int, Dict[str, str]], Any]]) -> Dict[int, Any]:
    """The chunks of an interrupted run that ``finished`` accepts (none without ``--resume``), by index."""
    if finished is None:
        return {}
    found = {k: finished(state, k, len(expected), part) for k, part in enumerate(expected)}
    return {k: value for k, value in found.items() if value is not None}


def write_arrays_chunk(state: Path, k: int, n: int, arrays: Dict[str, np.ndarray], record: Dict[str, Any]) -> Path:
    """Write a chunk of per-sample ``arrays`` with its ``record`` (last: the chunk's mark of completion)."""
    from ..io import atomic_save_npz, atomic_write_json

    directory = _chunk_dir(state, k, n)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(directory / _ARRAYS, **arrays)
    atomic_write_json(directory / _RECORD, record)
    return directory


def read_arrays_chunk(state: Path, k: int, n: int, expected: Dict[str, str], names: Sequence[str],
                      what: str) -> Optional[Tuple[Dict[str, Any], Dict[str, np.ndarray]]]:
    """The chunk ``k`` of ``n`` of per-sample arrays ``names`` in the state (when its fingerprint is the run's), else None.

    Raises
    ------
    ConfigError
        If the chunk's record is there but its arrays are incomplete.
    """
    from ..integrity import load_npz

    directory = _chunk_dir(state, k, n)
    if not (directory / _RECORD).is_file():
        return None
    try:
        record = json.loads((directory / _RECORD).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("fingerprint") != expected or record.get("k") != k:
        logger.warning("chunk %d of %d in %s belongs to another run or is unreadable: it is run again", k, n, directory)
        return None
    arrays = load_npz(directory / _ARRAYS, what, fix=_FIX)
    if any(name not in arrays for name in names) or len(arrays[names[0]]) != record.get("n"):
        raise ConfigError(f"{what} {directory} is incomplete; {_FIX}")
    return record, {name: arrays[name] for name in names}

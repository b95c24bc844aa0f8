"""The resumable state of an evaluation: one ``.npz`` file rewritten atomically after each batch.

The file is data only (read with ``allow_pickle=False``) and carries a SHA-256
over its content (:func:`gluon_robust.integrity.arrays_digest`), so a corrupt,
truncated or hand-edited state file is refused instead of trusted. It also
records the run's identity: the :class:`~gluon_robust.fingerprint.RunFingerprint`
(weights, data, recipe) and the settings a resume must keep (batch size,
shard...); a resume whose identity differs is refused, naming what differs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from ..errors import ConfigError
from ..fingerprint import PARTS, mismatch
from ..integrity import arrays_digest, load_npz
from ..io import atomic_save_npz
from .robustness import AttackOutcome, Checkpoint, RobustnessResult

__all__ = ["StateFile", "STATE_NAME"]

logger = logging.getLogger(__name__)

#: The state file's name inside the output directory.
STATE_NAME = "evaluate.state.npz"

_DIGEST = "sha256"
_IDENTITY = "identity"
_FIX = "remove it or run without --resume"
_PER_SAMPLE = ("broken", "attacked", "distance", "queries", "invalid")


class StateFile(Checkpoint):
    """A :class:`~gluon_robust.evaluation.robustness.Checkpoint` in ``out_dir/evaluate.state.npz``.

    Parameters
    ----------
    out_dir : path
        The evaluation's output directory.
    identity : mapping
        What must match for a resume, JSON-ready: the run fingerprint's parts
        (``weights``, ``data``, ``recipe``: SHA-256 digests, see
        :mod:`gluon_robust.fingerprint`), checked first, and any other settings
        (batch size, shard, model description...).
    resume : bool
        Load the saved progress; otherwise an existing state file is ignored and overwritten.
    extra_state : tuple of callables, optional
        ``(get, set)``: arrays saved alongside the result (e.g. collected examples) and restored on resume.
    """

    def __init__(
        self,
        out_dir: str | Path,
        identity: Mapping[str, Any],
        *,
        resume: bool,
        extra_state: Optional[Tuple[Callable[[], Dict[str, np.ndarray]], Callable[[Dict[str, np.ndarray]], None]]] = None,
    ) -> None:
        self.path = Path(out_dir) / STATE_NAME
        self.identity: Dict[str, Any] = json.loads(json.dumps(dict(identity), sort_keys=True, default=str))
        self.resume = bool(resume)
        self.extra_state = extra_state

    def load(self) -> Optional[Tuple[int, RobustnessResult]]:
        """The saved progress, or None without ``resume`` or without a state file.

        Raises
        ------
        ConfigError
            If the file is a pickle, unreadable, truncated, fails its SHA-256
            check, or belongs to a run with other weights, recipe or settings.
        DataError
            If it belongs to a run on other data.
        """
        if not self.resume:
            return None
        if not self.path.exists():
            logger.warning("--resume: no state file %s, starting from the beginning", self.path)
            return None
        arrays = load_npz(self.path, "evaluation state", fix=_FIX)
        digest = arrays.pop(_DIGEST, None)
        if digest is None or digest.shape != () or str(digest) != arrays_digest(arrays):
            raise ConfigError(f"the evaluation state {self.path} fails its SHA-256 check (corrupt, edited or written "
                              f"by an older version); {_FIX}")
        self._check_identity(arrays.pop(_IDENTITY, None))
        try:
            pos, result = self._result(arrays)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise ConfigError(f"the evaluation state {self.path} is inconsistent ({type(err).__name__}: {err}); "
                              f"{_FIX}") from None
        if self.extra_state is not None:
            self.extra_state[1]({k[6:]: v for k, v in arrays.items() if k.startswith("extra_")})
        return pos, result

    def _check_identity(self, stored: Optional[np.ndarray]) -> None:
        """Refuse a state written by another run, naming the first part or setting that differs."""
        what = f"the evaluation state {self.path}"
        try:
            saved = json.loads(str(stored)) if stored is not None and stored.shape == () else None
        except ValueError:
            saved = None
        if not isinstance(saved, dict):
            raise ConfigError(f"{what} records no run identity (written by an older version); {_FIX}")
        for part in PARTS:
            if part not in self.identity:
                continue
            if part not in saved:
                raise ConfigError(f"{what} has no {part} fingerprint (written by an older version); {_FIX}")
            if saved[part] != self.identity[part]:
                raise mismatch(part, str(self.identity[part]), str(saved[part]), what, "this run", _FIX)
        for key in sorted(set(saved) | set(self.identity)):
            if key not in PARTS and saved.get(key) != self.identity.get(key):
                raise ConfigError(f"{what} belongs to a run with another {key} (there {saved.get(key)!r}, here "
                                  f"{self.identity.get(key)!r}); {_FIX}")

    def _result(self, arrays: Dict[str, np.ndarray]) -> Tuple[int, RobustnessResult]:
        """Rebuild ``(pos, result)`` from the state's arrays, checking that their sizes agree."""
        meta = json.loads(str(arrays["meta"]))
        outcomes = [
            AttackOutcome(
                name=m["name"], norm=m["norm"], eps=m["eps"], broken=arrays[f"broken_{k}"],
                attacked=arrays[f"attacked_{k}"], distance=arrays[f"distance_{k}"], queries=arrays[f"queries_{k}"],
                seconds=m["seconds"], invalid=arrays[f"invalid_{k}"], black_box=m["black_box"],
            )
            for k, m in enumerate(meta["outcomes"])
        ]
        result = RobustnessResult(arrays["index"], arrays["labels"], arrays["clean_pred"], outcomes,
                                  meta["cascade"], seconds=meta["seconds"])
        n = len(result.index)
        sizes = {len(result.labels), len(result.clean_pred)}
        sizes |= {len(getattr(o, name)) for o in outcomes for name in _PER_SAMPLE}
        if sizes != {n}:
            raise ValueError(f"per-sample arrays of lengths {sorted(sizes | {n})}")
        pos = meta["pos"]
        if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos <= n:
            raise ValueError(f"position {pos!r} outside 0..{n}")
        return pos, result

    def save(self, pos: int, result: RobustnessResult) -> None:
        """Write ``(pos, result)``, the run's identity and their SHA-256, atomically."""
        arrays: Dict[str, np.ndarray] = {
            _IDENTITY: np.array(json.dumps(self.identity, sort_keys=True)),
            "index": result.index, "labels": result.labels, "clean_pred": result.clean_pred,
        }
        meta = {
            "pos": pos, "cascade": result.cascade, "seconds": result.seconds,
            "outcomes": [{"name": o.name, "norm": o.norm, "eps": o.eps, "seconds": o.seconds, "black_box": o.black_box}
                         for o in result.outcomes],
        }
        arrays["meta"] = np.array(json.dumps(meta))
        for k, o in enumerate(result.outcomes):
            arrays.update({f"{name}_{k}": getattr(o, name) for name in _PER_SAMPLE})
        if self.extra_state is not None:
            arrays.update({f"extra_{k}": v for k, v in self.extra_state[0]().items()})
        arrays[_DIGEST] = np.array(arrays_digest(arrays))
        atomic_save_npz(self.path, **arrays)

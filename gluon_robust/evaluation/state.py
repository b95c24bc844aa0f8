"""The resumable state of an evaluation: one ``.npz`` file rewritten atomically after each batch.

The file is data only (read with ``allow_pickle=False``) and carries a SHA-256
over its content (:func:`gluon_robust.integrity.arrays_digest`), so a corrupt
or hand-edited state file is refused instead of trusted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from ..errors import ConfigError
from ..integrity import arrays_digest, load_npz
from ..io import atomic_save_npz
from .robustness import AttackOutcome, Checkpoint, RobustnessResult

__all__ = ["StateFile", "STATE_NAME"]

logger = logging.getLogger(__name__)

#: The state file's name inside the output directory.
STATE_NAME = "evaluate.state.npz"

_DIGEST = "sha256"


class StateFile(Checkpoint):
    """A :class:`~gluon_robust.evaluation.robustness.Checkpoint` in ``out_dir/evaluate.state.npz``.

    Parameters
    ----------
    out_dir : path
        The evaluation's output directory.
    fingerprint : dict
        What must match for a resume (recipe, eps, norm, seed, data, batch size...).
    resume : bool
        Load the saved progress; otherwise an existing state file is ignored and overwritten.
    extra_state : tuple of callables, optional
        ``(get, set)``: arrays saved alongside the result (e.g. collected examples) and restored on resume.
    """

    def __init__(
        self,
        out_dir: str | Path,
        fingerprint: Dict[str, Any],
        *,
        resume: bool,
        extra_state: Optional[Tuple[Callable[[], Dict[str, np.ndarray]], Callable[[Dict[str, np.ndarray]], None]]] = None,
    ) -> None:
        self.path = Path(out_dir) / STATE_NAME
        self.fingerprint = json.dumps(fingerprint, sort_keys=True, default=str)
        self.resume = bool(resume)
        self.extra_state = extra_state

    def load(self) -> Optional[Tuple[int, RobustnessResult]]:
        if not self.resume:
            return None
        if not self.path.exists():
            logger.warning("--resume: no state file %s, starting from the beginning", self.path)
            return None
        fix = "remove it or run without --resume"
        arrays = load_npz(self.path, "evaluation state", fix=fix)
        digest = arrays.pop(_DIGEST, None)
        if digest is None or digest.shape != () or str(digest) != arrays_digest(arrays):
            raise ConfigError(f"the evaluation state {self.path} fails its SHA-256 check (corrupt, edited or written "
                              f"by an older version); {fix}")
        saved = str(arrays.pop("fingerprint"))
        if saved != self.fingerprint:
            raise ConfigError(
                f"resume={self.resume!r}: the state file {self.path} belongs to a different evaluation "
                f"({saved}); remove it or run without --resume"
            )
        meta = json.loads(str(arrays.pop("meta")))
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
        if self.extra_state is not None:
            self.extra_state[1]({k[6:]: v for k, v in arrays.items() if k.startswith("extra_")})
        return int(meta["pos"]), result

    def save(self, pos: int, result: RobustnessResult) -> None:
        arrays: Dict[str, np.ndarray] = {
            "fingerprint": np.array(self.fingerprint),
            "index": result.index, "labels": result.labels, "clean_pred": result.clean_pred,
        }
        meta = {
            "pos": pos, "cascade": result.cascade, "seconds": result.seconds,
            "outcomes": [{"name": o.name, "norm": o.norm, "eps": o.eps, "seconds": o.seconds, "black_box": o.black_box}
                         for o in result.outcomes],
        }
        arrays["meta"] = np.array(json.dumps(meta))
        for k, o in enumerate(result.outcomes):
            arrays.update({f"broken_{k}": o.broken, f"attacked_{k}": o.attacked, f"distance_{k}": o.distance,
                           f"queries_{k}": o.queries, f"invalid_{k}": o.invalid})
        if self.extra_state is not None:
            arrays.update({f"extra_{k}": v for k, v in self.extra_state[0]().items()})
        arrays[_DIGEST] = np.array(arrays_digest(arrays))
        atomic_save_npz(self.path, **arrays)

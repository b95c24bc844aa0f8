"""The query-counting wrapper through which every black-box attack reaches its target.

See :mod:`gluon_robust.attacks.blackbox` for the accounting rules: a query is
one sample evaluated once, a sample's budget holds by construction, a
decision-based attack sees labels only, and the framework's final success
check costs no query.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, nd

from ..errors import ConfigError, ModelError
from ..validation import check_int

__all__ = ["QueryCounter", "CallableModel", "QueryBudgetExceeded"]

logger = logging.getLogger(__name__)

#: Rows per call to the target; bounds the memory of large query batches.
_CHUNK = 1024

class QueryBudgetExceeded(RuntimeError):
    """An attack asked for a query past a sample's ``max_queries``: a bug in the attack, never user error."""


# --------------------------------------------------------------------------- targets
class CallableModel:
    """A plain callable target together with what attacks need to know about it.

    Parameters
    ----------
    fn : callable
        ``fn(x) -> scores`` with ``x`` a float32 NumPy array (N, C, H, W) inside
        ``bounds``, returning class scores (N, K) (logits or probabilities) or
        labels (N,) of integers. It is never asked for gradients.
    bounds : tuple of float
        Valid pixel range ``(low, high)``.
    num_classes : int, optional
        Number of classes, used to validate labels and targets.
    input_size : tuple of int, optional
        ``(C, H, W)`` of one input, used to validate the batch.

    Examples
    --------
    >>> endpoint = CallableModel(lambda x: client.classify(x), bounds=(0, 1), num_classes=10)
    >>> result = HopSkipJump(norm="linf", eps=0.3, max_queries=1000)(endpoint, x, y)
    >>> result.queries                                  # per sample, never above 1000
    """

    def __init__(self, fn: Callable[[np.ndarray], Any], *, bounds: Tuple[float, float] = (0.0, 1.0),
                 num_classes: Optional[int] = None, input_size: Optional[Sequence[int]] = None) -> None:
        if not callable(fn):
            raise ConfigError(f"the target must be callable, got {type(fn).__name__}")
        low, high = (float(b) for b in bounds)
        if not low < high:
            raise ConfigError(f"bounds must satisfy low < high, got {tuple(bounds)}")
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, minimum=2)
        self.fn = fn
        self.bounds = (low, high)
        self.num_classes = num_classes
        self.input_size = None if input_size is None else tuple(int(v) for v in input_size)
        self.ctx = mx.cpu()

    def __call__(self, x: np.ndarray) -> Any:
        return self.fn(x)

    def __repr__(self) -> str:
        return f"CallableModel({getattr(self.fn, '__name__', type(self.fn).__name__)}, bounds={self.bounds})"


def _digest(row: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).digest()


class QueryCounter:
    """The only way a black-box attack reaches its target: counted, budgeted, label-only on demand.

    Built by :meth:`BlackBoxAttack.__call__` for one call; it stands in for
    the model in the framework (it has ``bounds``, ``num_classes``, ``ctx``,
    ``input_size`` and is callable on an NDArray batch for the final check).

    Parameters
    ----------
    target : Classifier, CallableModel or callable
        A Gluon block (evaluated in eval mode) or a callable on NumPy batches
        returning scores (N, K) or labels (N,).
    max_queries : int
        Per-sample budget.
    labels_only : bool
        Expose labels only (decision-based attacks); :meth:`scores` then raises.
    attack : str
        Name of the attack, for error messages.

    Attributes
    ----------
    counts : numpy.ndarray of int, shape (N,)
        Queries spent per sample of the current run.
    """

    def __init__(self, target: Any, *, max_queries: int, labels_only: bool = False, attack: str = "attack") -> None:
        if not callable(target):
            raise ConfigError(f"the target must be a model or a callable, got {type(target).__name__}")
        self.target = target
        self.max_queries = check_int("max_queries", max_queries)
        self.labels_only = bool(labels_only)
        self.attack = attack
        self.bounds: Tuple[float, float] = tuple(float(b) for b in getattr(target, "bounds", (0.0, 1.0)))  # type: ignore
        self.num_classes: Optional[int] = getattr(target, "num_classes", None)
        self.input_size = getattr(target, "input_size", None)
        self.ctx = getattr(target, "ctx", mx.cpu())
        self.counts = np.zeros(0, np.int64)
        self._is_block = isinstance(target, mx.gluon.Block)
        self._x: Optional[np.ndarray] = None
        self._admissible: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None
        self._memo: Dict[bytes, int] = {}
        self._open = False

    # ------------------------------------------------------------- a run
    def start(self, x: np.ndarray, admissible: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None) -> None:
        """Begin a run on the clean samples ``x``; ``admissible(x_rows, points)`` maps candidates to the points sent."""
        self._x = x
        self._admissible = admissible
        self.counts = np.zeros(len(x), np.int64)
        self._open = True

    def finish(self) -> np.ndarray:
        """End the run (later queries raise) and return the per-sample counts."""
        self._open = False
        return self.counts.copy()

    @property
    def remaining(self) -> np.ndarray:
        """Queries left per sample, (N,)."""
        return self.max_queries - self.counts

    # ------------------------------------------------------------ queries
    def scores(self, points: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Class scores (M, K) of ``points`` (M, C, H, W); ``rows[i]`` is the sample that pays for row ``i``."""
        if self.labels_only:
            raise RuntimeError(f"{self.attack} is decision-based: it may see labels only")
        out = self._query(points, rows)
        if out.ndim != 2:
            raise ModelError(
                f"{self.attack} needs class scores, but the target returns labels only; "
                "use a decision-based attack (hopskipjump, boundary)"
            )
        return out

    def labels(self, points: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Predicted labels (M,) of ``points``; each row costs its sample one query."""
        out = self._query(points, rows)
        return out if out.ndim == 1 else out.argmax(axis=1)

    def _query(self, points: np.ndarray, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not self._open or self._x is None:
            raise RuntimeError("queries are only allowed while an attack runs")
        if len(points) != len(rows):
            raise RuntimeError(f"{len(points)} points for {len(rows)} rows")
        spend = np.bincount(rows, minlength=len(self.counts))
        over = np.flatnonzero(self.counts + spend > self.max_queries)
        if over.size:
            raise QueryBudgetExceeded(
                f"{self.attack} asked sample {over[0]} for query {self.counts[over[0]] + spend[over[0]]} "
                f"of a budget of {self.max_queries}"
            )
        if len(rows) == 0:
            return np.zeros((0, self.num_classes or 2), np.float32)
        points = np.ascontiguousarray(points, dtype=np.float32)
        if self._admissible is not None:
            whole = len(rows) == len(self._x) and bool((rows == np.arange(len(rows))).all())
            points = self._admissible(self._x if whole else self._x[rows], points)  # no copy for a whole batch
        out = self._evaluate(points)
        self.counts += spend
        if not self._is_block:
            answers = out if out.ndim == 1 else out.argmax(axis=1)
            self._memo.update(zip(map(_digest, points), answers.tolist()))
        return out

    def _evaluate(self, points: np.ndarray) -> np.ndarray:
        """Evaluate the target on ``points`` in chunks; scores (M, K) float or labels (M,) int."""
        parts = []
        for start in range(0, len(points), _CHUNK):
            chunk = points[start : start + _CHUNK]
            if self._is_block:
                with autograd.pause(train_mode=False):
                    raw = self.target(nd.array(chunk, ctx=self.ctx, dtype="float32")).asnumpy()
            else:
                raw = self.target(chunk)
                raw = raw.asnumpy() if isinstance(raw, nd.NDArray) else np.asarray(raw)
            parts.append(self._validate(raw, len(chunk)))
        return np.concatenate(parts)

    def _validate(self, raw: np.ndarray, m: int) -> np.ndarray:
        if raw.ndim == 2 and raw.shape[0] == m and raw.shape[1] >= 2:
            if not np.issubdtype(raw.dtype, np.number):
                raise ModelError(f"the target returned scores of dtype {raw.dtype}")
            return raw.astype(np.float32, copy=False)
        if raw.ndim == 1 and raw.shape[0] == m:
            if not np.issubdtype(raw.dtype, np.number) or not np.all(np.mod(raw, 1) == 0) or (m and raw.min() < 0):
                raise ModelError("the target returned labels that are not non-negative integers")
            return raw.astype(np.int64)
        raise ModelError(f"the target returned shape {raw.shape} for {m} inputs; expected scores ({m}, K) or labels ({m},)")

    # -------------------------------------------------- the final check
    def __call__(self, x: nd.NDArray) -> nd.NDArray:
        """Scores for the framework's success check; never counted.

        A Gluon block is evaluated for real. A callable target is answered
        from the labels of the attack's queries (as one-hot scores); a point
        never queried is evaluated for real, outside the budget, with a warning.
        """
        if self._is_block:
            with autograd.pause(train_mode=False):
                return self.target(x)
        points = x.asnumpy()
        labels = np.array([self._memo.get(_digest(p), -1) for p in points], dtype=np.int64)
        missing = labels < 0
        if missing.any():
            logger.warning(
                "%s: %d returned points were never queried; evaluating them outside the query budget",
                self.attack, int(missing.sum()),
            )
            out = self._evaluate(points[missing])
            labels[missing] = out if out.ndim == 1 else out.argmax(axis=1)
        width = max(self.num_classes or 2, int(labels.max()) + 1)
        return nd.one_hot(nd.array(labels, ctx=x.context), width)

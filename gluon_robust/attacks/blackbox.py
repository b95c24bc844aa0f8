"""What every black-box attack shares: the query counter, the callable target, the base class.

A black-box attack sees its target only through forward passes. The target
may be a Gluon :class:`~gluon_robust.model.Classifier` or *any* callable from
a NumPy batch (float32, NCHW, inside the bounds) to class scores ``(N, K)``
or to labels ``(N,)``: a remote endpoint, a model of another framework.
Wrap a plain callable in :class:`CallableModel` to state its bounds and its
number of classes.

Every evaluation goes through a :class:`QueryCounter`, which

* counts queries per sample (one query = one sample evaluated once),
* refuses any query past ``max_queries`` for a sample (it raises
  :class:`QueryBudgetExceeded`, an internal error), so the budget holds by
  construction,
* gives decision-based attacks labels only (the argmax, when the target
  returns scores),
* sends only admissible points: inside the bounds and, for a point that lies
  in the epsilon-ball, exactly the point the framework would return for it.

The framework's final success check (:meth:`Attack.__call__
<gluon_robust.attacks.base.Attack.__call__>`) costs no query. A Gluon block is
evaluated again for real, free and independent of the attack. Any other
callable is answered from the labels it gave to the attack's own queries:
every point an attack returns is one it queried, bit for bit, so a remote
endpoint sees not one query beyond the budget. (A point that was never queried
would be evaluated for real, outside the budget, with a warning; the attacks
here never return one.) The memo keeps a 16-byte digest and a label per query.
Decision-based attacks may end within float rounding of the decision
boundary; there, a Gluon block evaluated in a batch of another size can, rarely,
disagree with the label the attack was given.

``result.queries`` is the per-sample query count; ``result.iterations`` holds
the same count, since for a black-box attack one iteration of work is one query.
"""

from __future__ import annotations

import abc
import hashlib
import logging
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import mxnet as mx
import numpy as np
from mxnet import autograd, nd

from ..errors import ConfigError, ModelError
from ..validation import check_int, check_positive
from .base import Attack, AttackResult

__all__ = [
    "BlackBoxAttack", "QueryCounter", "CallableModel", "QueryBudgetExceeded", "margin", "is_adversarial",
    "lp_distance", "project", "steepest_direction", "noise_start", "boundary_search", "blend", "per_sample", "take",
    "GradientEstimationAttack",
]

logger = logging.getLogger(__name__)

ArrayLike = Union[nd.NDArray, np.ndarray]
_TINY = 1e-12
#: Rows per call to the target; bounds the memory of large query batches.
_CHUNK = 1024
#: Passes of the framework's projection used to reach a point it maps to itself.
_SNAP_PASSES = 4


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

    def __init__(
        self,
        fn: Callable[[np.ndarray], Any],
        *,
        bounds: Tuple[float, float] = (0.0, 1.0),
        num_classes: Optional[int] = None,
        input_size: Optional[Sequence[int]] = None,
    ) -> None:
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
            points = self._admissible(self._x[rows], points)
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


# ------------------------------------------------------------------ numpy helpers
def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), int(np.prod(a.shape[1:])))


def per_sample(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Reshape (N,) values to broadcast against ``like`` (N, ...)."""
    return np.asarray(values).reshape((-1,) + (1,) * (like.ndim - 1))


def margin(scores: np.ndarray, y: np.ndarray, target: Optional[np.ndarray]) -> np.ndarray:
    """The margin to *minimise*, negative exactly when the attack succeeds (ties aside).

    Untargeted: ``s_y - max_{j != y} s_j``; targeted: ``max_{j != t} s_j - s_t``.
    Works the same on logits and on probabilities.
    """
    scores = scores.astype(np.float64)
    label = y if target is None else target
    picked = scores[np.arange(len(scores)), label]
    others = scores.copy()
    others[np.arange(len(scores)), label] = -np.inf
    best_other = others.max(axis=1)
    return picked - best_other if target is None else best_other - picked


def is_adversarial(labels: np.ndarray, y: np.ndarray, target: Optional[np.ndarray]) -> np.ndarray:
    """Misclassified (untargeted) or classified as the target (targeted)."""
    return labels != y if target is None else labels == target


def lp_distance(norm: str, delta: np.ndarray) -> np.ndarray:
    """Per-sample L-inf or L2 size of ``delta`` (N, ...), float64."""
    flat = _flat(delta).astype(np.float64)
    if norm == "linf":
        return np.abs(flat).max(axis=1) if flat.shape[1] else np.zeros(len(flat))
    return np.sqrt((flat**2).sum(axis=1))


def project(norm: str, delta: np.ndarray, eps: float) -> np.ndarray:
    """Project each sample of ``delta`` onto the ``norm``-ball of radius ``eps``."""
    if norm == "linf":
        return np.clip(delta, -eps, eps)
    factor = np.minimum(1.0, eps / (lp_distance("l2", delta) + _TINY))
    return (delta * per_sample(factor, delta)).astype(delta.dtype)


def steepest_direction(norm: str, grad: np.ndarray) -> np.ndarray:
    """The unit step of steepest ascent for ``grad``: its sign (L-inf) or its direction (L2)."""
    if norm == "linf":
        return np.sign(grad)
    return grad / per_sample(lp_distance("l2", grad) + _TINY, grad)


def take(a: Optional[np.ndarray], idx: Any) -> Optional[np.ndarray]:
    """``a[idx]``, or None for no array (the targets of an untargeted attack)."""
    return None if a is None else a[idx]


def blend(x: np.ndarray, x_adv: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``(1 - alpha) x + alpha x_adv`` per sample (alpha (N,) in [0, 1])."""
    a = per_sample(alpha, x).astype(np.float32)
    return ((1 - a) * x + a * x_adv).astype(np.float32)


def _noise_sides(h: int, w: int) -> List[Tuple[int, int]]:
    """Grid sizes of the start noise: full resolution, then 1x1, 2x2, 4x4, ... up to the image."""
    sides = [(h, w)]
    k = 1
    while k < max(h, w):
        sides.append((min(k, h), min(k, w)))
        k *= 2
    return sides


def noise_start(
    oracle: QueryCounter,
    x: np.ndarray,
    y: np.ndarray,
    target: Optional[np.ndarray],
    rows: np.ndarray,
    rngs: Sequence[np.random.Generator],
    tries: int,
) -> Tuple[np.ndarray, np.ndarray]:
    """Uniform noise in the bounds, drawn until adversarial (one query a draw, at most ``tries``).

    Draw ``k`` is uniform noise on a grid cycling through full resolution,
    1x1, 2x2, 4x4, ... cells, each cell one uniform value: a network may call
    every full-resolution noise image the same class (the MNIST reference
    model calls it an 8), and coarser noise reaches other classes.

    Returns ``(points, found)``: the first adversarial draw of each sample
    (its clean input where none was found) and whether one was found.
    ``rngs[i]`` draws for ``rows[i]``.
    """
    low, high = oracle.bounds
    c, h, w = x.shape[1:]
    sides = _noise_sides(h, w)
    points, found = x.copy(), np.zeros(len(x), bool)
    for k in range(tries):
        active = np.flatnonzero(~found & (oracle.remaining[rows] > 0))
        if active.size == 0:
            break
        gh, gw = sides[k % len(sides)]
        cells = np.stack([rngs[i].uniform(low, high, size=(c, gh, gw)) for i in active])
        noise = cells.repeat(-(-h // gh), axis=2).repeat(-(-w // gw), axis=3)[:, :, :h, :w].astype(np.float32)
        hit = is_adversarial(oracle.labels(noise, rows[active]), y[active], take(target, active))
        points[active[hit]] = noise[hit]
        found[active[hit]] = True
    return points, found


def boundary_search(
    oracle: QueryCounter,
    x: np.ndarray,
    x_adv: np.ndarray,
    y: np.ndarray,
    target: Optional[np.ndarray],
    rows: np.ndarray,
    tol: Union[float, np.ndarray],
    between: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] = blend,
) -> Tuple[np.ndarray, np.ndarray]:
    """Binary search for the decision boundary on the path ``between(x, x_adv, a)``, ``a`` from 0 to 1.

    ``x_adv`` must be adversarial (and already queried). Each halving costs one
    query per sample; a sample stops when its interval is below ``tol`` or its
    budget is spent. Returns the adversarial end of each interval (a queried
    point, or ``x_adv`` itself) and its ``a``.
    """
    low = np.zeros(len(x))
    high = np.ones(len(x))
    best = x_adv.copy()
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), (len(x),))
    while True:
        active = np.flatnonzero((high - low > tol) & (oracle.remaining[rows] > 0))
        if active.size == 0:
            return best, high
        mid = (low[active] + high[active]) / 2
        points = between(x[active], x_adv[active], mid)
        hit = is_adversarial(oracle.labels(points, rows[active]), y[active], take(target, active))
        high[active] = np.where(hit, mid, high[active])
        low[active] = np.where(hit, low[active], mid)
        best[active[hit]] = points[hit]


def _distinct(x: np.ndarray, y: np.ndarray, target: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Indices of the first occurrence of each distinct (input, label, target) and the map back to all rows."""
    seen: Dict[bytes, int] = {}
    first: List[int] = []
    inverse = np.empty(len(x), np.int64)
    for i in range(len(x)):
        key = _digest(x[i]) + np.int64(y[i]).tobytes() + (b"" if target is None else np.int64(target[i]).tobytes())
        if key not in seen:
            seen[key] = len(first)
            first.append(i)
        inverse[i] = seen[key]
    return np.asarray(first, np.int64), inverse


# -------------------------------------------------------------------- base class
class BlackBoxAttack(Attack):
    """Base class of attacks that use nothing but forward passes, with exact query accounting.

    Subclasses implement :meth:`_attack` in NumPy against a
    :class:`QueryCounter`; the base class wraps the target, removes duplicate
    samples (so the framework's batch padding costs no query), makes every
    queried point admissible and reports the counts. The framework guarantees
    of :class:`~gluon_robust.attacks.base.Attack` all still apply.

    Parameters
    ----------
    norm : str
        Threat model.
    eps : float, optional
        Radius for fixed-epsilon attacks; None for minimal-perturbation ones.
    max_queries : int
        Per-sample query budget, never exceeded.
    seed : int
        Seed of every random draw.

    Notes
    -----
    Call an attack with a :class:`~gluon_robust.model.Classifier`, a
    :class:`CallableModel` or any callable (bounds then default to (0, 1)).
    ``result.queries`` (and ``result.iterations``) count each sample's queries.
    """

    #: Whether the attack sees labels only (decision-based).
    labels_only: ClassVar[bool] = False

    def __init__(self, *, norm: str, eps: Optional[float], max_queries: int, seed: int = 0) -> None:
        super().__init__(norm=norm, eps=eps, seed=seed)
        self.max_queries = check_int("max_queries", max_queries)

    def __call__(self, model: Any, x: ArrayLike, y: ArrayLike, *, target: Optional[ArrayLike] = None) -> AttackResult:
        """Attack a batch of a black-box target; see :meth:`Attack.__call__ <gluon_robust.attacks.base.Attack.__call__>`.

        Parameters
        ----------
        model : Classifier, CallableModel or callable
            The target: only ever evaluated, never differentiated.
        x, y, target
            As for every attack.
        """
        oracle = QueryCounter(model, max_queries=self.max_queries, labels_only=self.labels_only, attack=self.name)
        return super().__call__(oracle, x, y, target=target)

    @abc.abstractmethod
    def _attack(
        self,
        oracle: QueryCounter,
        x: np.ndarray,
        y: np.ndarray,
        target: Optional[np.ndarray],
        rngs: Sequence[np.random.Generator],
    ) -> np.ndarray:
        """Craft adversarial inputs with queries only.

        Parameters
        ----------
        oracle : QueryCounter
            The target; row ``i`` of a query is paid by sample ``rows[i]``.
        x : numpy.ndarray
            Clean, distinct samples, float32 (N, C, H, W).
        y, target : numpy.ndarray
            True and target labels, int64 (N,); ``target`` is None when untargeted.
        rngs : sequence of numpy.random.Generator
            One generator per sample.

        Returns
        -------
        numpy.ndarray
            The points to return, each one the sample queried (or its clean
            input, once queried), so that the final check needs no query.
        """

    def _run(
        self,
        model: Any,
        x: nd.NDArray,
        y: nd.NDArray,
        target: Optional[nd.NDArray],
        rngs: Sequence[np.random.Generator],
    ) -> Tuple[nd.NDArray, np.ndarray]:
        oracle = model if isinstance(model, QueryCounter) else QueryCounter(
            model, max_queries=self.max_queries, labels_only=self.labels_only, attack=self.name
        )
        x_np = x.asnumpy()
        y_np = y.asnumpy().astype(np.int64)
        t_np = None if target is None else target.asnumpy().astype(np.int64)
        first, inverse = _distinct(x_np, y_np, t_np)
        xu = x_np[first]
        low, high = oracle.bounds
        oracle.start(xu, lambda xs, pts: self._admissible(xs, pts, low, high))
        x_adv = self._attack(oracle, xu, y_np[first], take(t_np, first), [rngs[i] for i in first])
        x_adv = self._admissible(xu, np.asarray(x_adv, dtype=np.float32), low, high)
        counts = oracle.finish()
        logger.debug(
            "%s: %d distinct samples, queries median %d, max %d (budget %d)",
            self.name, len(first), int(np.median(counts)), int(counts.max()), self.max_queries,
        )
        return nd.array(x_adv[inverse], ctx=x.context, dtype="float32"), counts[inverse]

    def _admissible(self, x: np.ndarray, points: np.ndarray, low: float, high: float) -> np.ndarray:
        """The point actually sent for each candidate, and returned if the attack keeps it.

        Clipped to the bounds. With an epsilon, a candidate inside the ball (up to
        rounding) is passed through the framework's own projection
        (:meth:`Attack._enforce`) until that changes nothing, so the returned
        point is the queried one bit for bit. A candidate outside the ball (a
        minimal-perturbation attack on its way in, a finite-difference probe)
        is sent as it is.
        """
        out = np.clip(points, low, high).astype(np.float32)
        if self.eps is None:
            return out
        inside = np.flatnonzero(lp_distance(self.norm.name, out - x) <= self.eps * (1 + 1e-5) + 1e-6)
        if inside.size == 0:
            return out
        xs = nd.array(x[inside], dtype="float32")
        current = nd.array(out[inside], dtype="float32")
        for _ in range(_SNAP_PASSES):
            projected = self._enforce(xs, current, low, high)
            if bool((projected == current).min().asscalar()):  # one sync per pass, outside any per-step loop
                break
            current = projected
        out[inside] = current.asnumpy()
        return out


class GradientEstimationAttack(BlackBoxAttack):
    """Projected descent on the margin with a gradient estimated from queries (NES, bandits).

    Each step estimates the margin's gradient at the current point
    (:meth:`_estimate`, ``_estimate_cost`` queries), takes a steepest-descent
    step of ``step_size`` (the sign for L-inf, the direction for L2),
    projects onto the eps-ball and the bounds, and queries the new point to
    see whether it is adversarial: ``_estimate_cost + 1`` queries a step. A
    sample stops when it is adversarial or has fewer queries left than a step
    costs. Every point returned was queried.

    Parameters
    ----------
    eps : float
        Radius of the threat model.
    norm : str
        ``"linf"`` or ``"l2"``.
    max_queries : int
        Per-sample budget.
    step_size : float
        Step of the descent, in pixel units.
    seed : int
        Seed of the random probes.
    """

    norms = ("linf", "l2")
    #: Queries one gradient estimate costs each sample (subclasses set it from their hyperparameters).
    _estimate_cost: int = 1

    def __init__(self, *, eps: float, norm: str, max_queries: int, step_size: float, seed: int = 0) -> None:
        super().__init__(norm=norm, eps=check_positive("eps", eps), max_queries=max_queries, seed=seed)
        self.step_size = check_positive("step_size", step_size)

    def _begin(self, x: np.ndarray, rngs: Sequence[np.random.Generator]) -> Dict[str, Any]:
        """Per-run state of the estimator (a prior, for instance)."""
        return {}

    @abc.abstractmethod
    def _estimate(
        self,
        oracle: QueryCounter,
        points: np.ndarray,
        y: np.ndarray,
        target: Optional[np.ndarray],
        rows: np.ndarray,
        rngs: Sequence[np.random.Generator],
        state: Dict[str, Any],
    ) -> np.ndarray:
        """An estimate of the margin's gradient at ``points`` (rows ``rows``), spending ``_estimate_cost`` queries each."""

    def _attack(
        self,
        oracle: QueryCounter,
        x: np.ndarray,
        y: np.ndarray,
        target: Optional[np.ndarray],
        rngs: Sequence[np.random.Generator],
    ) -> np.ndarray:
        low, high = oracle.bounds
        current = x.copy()
        done = is_adversarial(oracle.scores(current, np.arange(len(x))).argmax(axis=1), y, target)
        state = self._begin(x, rngs)
        while True:
            active = np.flatnonzero(~done & (oracle.remaining >= self._estimate_cost + 1))
            if active.size == 0:
                return current
            t = take(target, active)
            grad = self._estimate(oracle, current[active], y[active], t, active, [rngs[i] for i in active], state)
            step = current[active] - self.step_size * steepest_direction(self.norm.name, grad)
            moved = np.clip(x[active] + project(self.norm.name, step - x[active], self.eps), low, high).astype(np.float32)
            current[active] = moved
            done[active] = is_adversarial(oracle.scores(moved, active).argmax(axis=1), y[active], t)

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
import functools
import logging
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mxnet import nd

from ..validation import check_int, check_positive
from .base import Attack, AttackKind, AttackResult
from .decision import blend, boundary_search, is_adversarial, margin, noise_start, per_sample, take
from .norms import get_norm
from .queries import CallableModel, QueryBudgetExceeded, QueryCounter, _digest

__all__ = [
    "BlackBoxAttack", "QueryCounter", "CallableModel", "QueryBudgetExceeded", "margin", "is_adversarial",
    "lp_distance", "project", "steepest_direction", "noise_start", "boundary_search", "blend", "per_sample", "take",
    "GradientEstimationAttack",
]

logger = logging.getLogger(__name__)

ArrayLike = Union[nd.NDArray, np.ndarray]
#: Passes of the framework's projection used to reach a point it maps to itself.
_SNAP_PASSES = 4


# ------------------------------------------------- kept for old import paths
def lp_distance(norm: str, delta: np.ndarray) -> np.ndarray:
    """Per-sample size of ``delta`` (N, ...) in ``norm``, float64; prefer ``get_norm(norm).distance``."""
    return get_norm(norm).distance(delta)


def project(norm: str, delta: np.ndarray, eps: float) -> np.ndarray:
    """Project each sample of ``delta`` onto the ``norm``-ball; prefer ``get_norm(norm).project``."""
    return get_norm(norm).project(delta, eps)


def steepest_direction(norm: str, grad: np.ndarray) -> np.ndarray:
    """The unit step of steepest ascent for ``grad``; prefer ``get_norm(norm).direction``."""
    return get_norm(norm).direction(grad)


@functools.lru_cache(maxsize=64)
def _mxnet_float32(value: float) -> np.float32:
    """``value`` as MXNet's operators read a float parameter (through its decimal text), as a float32."""
    return np.float32(nd.clip(nd.array([np.inf, -np.inf]), float(value), float(value)).asnumpy()[0])


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
    kind: ClassVar[AttackKind] = AttackKind.BLACK_BOX

    def __init__(self, *, norm: str, eps: Optional[float], max_queries: int, seed: int = 0) -> None:
        super().__init__(norm=norm, eps=eps, seed=seed)
        self.max_queries = check_int("max_queries", max_queries)

    def _wrap_model(self, model: Any) -> QueryCounter:
        """Every query goes through a :class:`QueryCounter` of the attack's budget.

        Parameters
        ----------
        model : Classifier, CallableModel or callable
            The target: only ever evaluated, never differentiated.
        """
        return QueryCounter(model, max_queries=self.max_queries, labels_only=self.labels_only, attack=self.name)

    @abc.abstractmethod
    def _attack(self, oracle: QueryCounter, x: np.ndarray, y: np.ndarray, target: Optional[np.ndarray],
                rngs: Sequence[np.random.Generator]) -> np.ndarray:
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

    def _run(self, model: Any, x: nd.NDArray, y: nd.NDArray, target: Optional[nd.NDArray],
             rngs: Sequence[np.random.Generator]) -> Tuple[nd.NDArray, np.ndarray]:
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
        out = np.clip(points, low, high).astype(np.float32, copy=False)
        if self.eps is None:
            return out
        delta = out - x
        inside = np.flatnonzero(self.norm.distance(delta) <= self.eps * (1 + 1e-5) + 1e-6)
        if inside.size == 0:
            return out
        if self.norm.coordinatewise:
            if inside.size == len(out):  # the usual case: no row copies, and the difference is reused
                return self._snap_coordinatewise(x, out, low, high, delta=delta)
            out[inside] = self._snap_coordinatewise(x[inside], out[inside], low, high)
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

    def _snap_coordinatewise(self, x: np.ndarray, points: np.ndarray, low: float, high: float,
                             delta: Optional[np.ndarray] = None) -> np.ndarray:
        """:meth:`_admissible`'s snapping for a coordinatewise norm (L-inf), in NumPy.

        There :meth:`Attack._enforce` is elementwise float32 arithmetic (a
        subtraction, a clip to the ball, an addition, a clip to the bounds),
        which NumPy computes bit for bit as MXNet does, so the per-query round
        trip through NDArrays is not needed. The clip limits are the float32
        values MXNet itself uses (:func:`_mxnet_float32`). At 3x224x224 every
        pass over the batch costs a few milliseconds a query, so the first
        pass works in one scratch array (``delta``, ``points - x``: may be
        given, and is then overwritten) and later passes only on the
        coordinates the first one moved; the others are already fixed points.
        A NaN coordinate, which ``_enforce`` replaces by the clean input's,
        takes :meth:`_snap_with_nan`.
        ``tests/test_blackbox.py`` checks the result against ``_enforce``.
        """
        eps = _mxnet_float32(self.eps)
        lo, hi = _mxnet_float32(low), _mxnet_float32(high)

        def project(clean: np.ndarray, scratch: np.ndarray) -> np.ndarray:
            """The framework's projection of ``clean + scratch`` (``scratch`` = point - clean), in place."""
            np.clip(scratch, -eps, eps, out=scratch)
            np.add(clean, scratch, out=scratch)
            return np.clip(scratch, lo, hi, out=scratch)

        projected = project(x, np.subtract(points, x) if delta is None else delta)
        moved = projected != points
        if not moved.any():
            return points
        # The projection is elementwise: a coordinate it left alone stays put, so later passes need only the moved ones.
        where = np.flatnonzero(moved)
        if np.isnan(points.reshape(-1)[where]).any():  # NaN never compares equal, so a NaN is always among them
            return self._snap_with_nan(x, points, eps, lo, hi)
        current, clean = projected.reshape(-1)[where], x.reshape(-1)[where]
        for _ in range(_SNAP_PASSES - 1):
            again = project(clean, current - clean)
            if np.array_equal(again, current):
                break
            current = again
        projected.reshape(-1)[where] = current
        return projected

    def _snap_with_nan(self, x: np.ndarray, points: np.ndarray, eps: np.float32, lo: np.float32,
                       hi: np.float32) -> np.ndarray:
        """:meth:`_snap_coordinatewise` for candidates with NaN coordinates: those become the clean input's."""
        current = points
        for _ in range(_SNAP_PASSES):
            projected = np.where(current == current, current, x)
            projected = self.norm.clip_to_box(x, projected - x, eps, lo, hi)
            if np.array_equal(projected, current):
                break
            current = projected
        return current


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
    def _estimate(self, oracle: QueryCounter, points: np.ndarray, y: np.ndarray, target: Optional[np.ndarray],
                  rows: np.ndarray, rngs: Sequence[np.random.Generator], state: Dict[str, Any]) -> np.ndarray:
        """An estimate of the margin's gradient at ``points`` (rows ``rows``), spending ``_estimate_cost`` queries each."""

    def _attack(self, oracle: QueryCounter, x: np.ndarray, y: np.ndarray, target: Optional[np.ndarray],
                rngs: Sequence[np.random.Generator]) -> np.ndarray:
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
            step = current[active] - self.step_size * self.norm.direction(grad)
            moved = np.clip(x[active] + self.norm.project(step - x[active], self.eps), low, high).astype(np.float32)
            current[active] = moved
            done[active] = is_adversarial(oracle.scores(moved, active).argmax(axis=1), y[active], t)

"""FAB: the Fast Adaptive Boundary attack, minimal perturbations by box-constrained projections.

Croce & Hein (2020), "Minimally distorted Adversarial Examples with a Fast
Adaptive Boundary Attack", ICML, https://arxiv.org/abs/1907.02044.

Distance: L-inf or L2 (minimal perturbation; an optional ``eps`` only cuts the
result to a threat model). Both classes are untargeted from the caller's view:
:class:`FAB` crosses the nearest decision boundary, :class:`FABT` (the variant
used by AutoAttack) runs FAB towards several likely classes in turn.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import mxnet as mx
import numpy as np
from mxnet import autograd, nd

from ..errors import ConfigError
from ..validation import check_int, check_positive
from .base import Attack, AttackKind, gradient_recording
from .norms import Norm, get_norm

__all__ = ["FAB", "FABT", "box_projection"]

_TINY = 1e-12


def _per_sample(values: nd.NDArray, like: nd.NDArray) -> nd.NDArray:
    """Reshape an (N,) array to broadcast against ``like`` (N, ...)."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


def box_projection(
    x: nd.NDArray, w: nd.NDArray, c: nd.NDArray, low: float, high: float, norm: Union[str, Norm]
) -> nd.NDArray:
    """Exact minimal-norm step onto a hyperplane inside a box.

    Solves, for every row ``i`` independently,
    ``min ||delta||_p  s.t.  <w_i, delta> = c_i,  low <= x_i + delta <= high``
    for ``p`` = inf or 2. When the hyperplane misses the box, the result is
    the box point that gets closest to it (the corner that maximises
    ``sign(c_i) <w_i, delta>``).

    Parameters
    ----------
    x, w : NDArray
        Points and hyperplane normals, (N, D).
    c : NDArray
        Right-hand sides, (N,).
    low, high : float
        The box (``x`` must lie inside it).
    norm : str or Norm
        ``"linf"`` or ``"l2"``; its :meth:`~Norm.hyperplane_direction` gives ``d``.

    Returns
    -------
    NDArray
        The steps ``delta``, (N, D).

    Notes
    -----
    With ``c >= 0`` (flip ``w`` otherwise) the optimum is ``clip(t * d, low - x,
    high - x)`` along ``d = sign(w)`` (L-inf) or ``d = w`` (L2, by the KKT
    conditions), for the smallest ``t >= 0`` with ``h(t) = <w, clip(t d)> = c``.
    ``h`` is non-decreasing and piecewise linear, with a kink where coordinate
    ``j`` saturates, at ``t_j = room_j / |d_j|`` (``room_j`` is the distance to
    the box face that ``d_j`` points at). Sorting the kinks gives ``h`` at each
    of them by cumulative sums; the root is in the first segment where ``h``
    reaches ``c``, where ``h`` is linear. Cost: one sort of D values per row.
    Every AutoAttack-style FAB solves this by the same sort-based principle;
    this derivation covers L-inf and L2 with one solver.
    """
    n, dim = x.shape
    flip = nd.where(c >= 0, nd.ones_like(c), -nd.ones_like(c)).reshape((-1, 1))
    w = nd.broadcast_mul(w, flip)  # <flip w, delta> = |c| is the same hyperplane
    c = nd.abs(c).reshape((-1, 1))
    d = get_norm(norm).hyperplane_direction(w)
    room = nd.where(d > 0, high - x, x - low)  # >= 0 inside the box
    slope = w * d  # |w| (L-inf) or w^2 (L2): the rate of <w, delta> while coordinate j moves
    saturated = nd.abs(w) * room  # what coordinate j contributes once it hits the box
    kinks = room / (nd.abs(d) + _TINY)  # zero directions never saturate (kink ~ +inf, slope 0)

    order = nd.argsort(kinks, axis=1, dtype="int64")
    flat = (order + nd.arange(n, ctx=x.context, dtype="int64").reshape((-1, 1)) * dim).reshape((-1,))

    def by_kink(a: nd.NDArray) -> nd.NDArray:
        return nd.take(a.reshape((-1,)), flat).reshape((n, dim))

    kinks_sorted = by_kink(kinks)
    value_cum = nd.cumsum(by_kink(saturated), axis=1)  # sum of saturated contributions up to kink k
    slope_cum = nd.cumsum(by_kink(slope), axis=1)
    slope_total = slope_cum[:, dim - 1 : dim]
    h_at_kinks = value_cum + kinks_sorted * (slope_total - slope_cum)
    below = nd.sum(nd.broadcast_lesser(h_at_kinks, c), axis=1)  # kinks before the root, (N,)
    prev = nd.maximum(below - 1, nd.zeros_like(below))
    started = below > 0
    value_before = nd.pick(value_cum, prev, axis=1) * started
    slope_after = slope_total.reshape((-1,)) - nd.pick(slope_cum, prev, axis=1) * started
    t = (c.reshape((-1,)) - value_before) / (slope_after + _TINY)
    t = nd.maximum(t, nd.pick(kinks_sorted, prev, axis=1) * started)  # the root is past the last kink below it
    infeasible = below >= dim
    t = nd.where(infeasible, kinks_sorted[:, dim - 1], t)  # every coordinate saturates: the best corner
    delta = nd.broadcast_mul(d, t.reshape((-1, 1)))
    return nd.minimum(nd.maximum(delta, low - x), high - x)


class FAB(Attack):
    """Fast Adaptive Boundary attack (Croce & Hein 2020).

    FAB looks for the adversarial example closest to the clean input ``x``.
    From the current iterate ``x_i`` (the first is ``x``) it

    1. linearises the classifier at ``x_i``: for every class ``k != y`` the
       margin ``f_k = z_k - z_y`` and its input gradient ``g_k`` (one forward
       pass, one backward pass per class);
    2. picks the linearised decision hyperplane ``f_k + <g_k, z - x_i> = 0``
       closest to ``x_i`` in the attack's norm (distance ``|f_k| / ||g_k||_*``);
    3. projects both ``x_i`` and the clean ``x`` onto that hyperplane
       intersected with the box ``model.bounds``, exactly (see
       :func:`box_projection`), giving steps ``d_i`` and ``d_0``;
    4. moves to the biased convex combination, extrapolated by ``eta``:
       ``x_{i+1} = clip((1 - a) (x_i + eta d_i) + a (x + eta d_0))`` with
       ``a = min(||d_i|| / (||d_i|| + ||d_0||), alpha_max)``, so a far-away
       iterate is pulled towards the projection of the clean point;
    5. if ``x_{i+1}`` is adversarial, keeps it when it beats the best so far
       and steps back towards the clean point:
       ``x_{i+1} = x + beta (x_{i+1} - x)``.

    Restarts after the first start at a random point of the ball of radius
    ``min(best distance so far, restart_eps) / 2`` around ``x``.

    Parameters
    ----------
    norm : str
        ``"linf"`` (default) or ``"l2"``.
    steps : int
        Iterations per run (default 100).
    restarts : int
        Runs; the first starts at ``x``, the others at random (default 1).
    alpha_max : float
        Largest weight of the clean point's projection, in [0, 1] (default 0.1).
    eta : float
        Extrapolation of the projection steps, >= 1 (default 1.05).
    beta : float
        Backward step towards ``x`` after a success, in (0, 1] (default 0.9).
    eps : float, optional
        Threat-model radius. FAB still minimises the perturbation; the
        framework then projects the result into the ``eps``-ball, so samples
        whose smallest adversarial perturbation is larger fail. Also the
        default ``restart_eps``. None (default) keeps the minimal perturbation.
    restart_eps : float, optional
        Scale of the random starts of the restarts (default ``eps``); needed
        when ``restarts > 1`` and ``eps`` is None.
    seed : int
        Seed of the random starts.

    Notes
    -----
    No targeted mode: reaching one given class means entering an intersection
    of half-spaces, and linearising one boundary at a time cycles between
    the competing classes (on a 10-class conv net a quarter of the points
    reached a random target, where targeted APGD reaches all). :class:`FABT`
    uses target classes only as directions towards misclassification.

    Shapes: ``x`` is (N, C, H, W) in pixel space inside ``model.bounds``,
    ``y`` is (N,). Samples that are never fooled come back
    unchanged (distance 0, success False); samples misclassified from the
    start come back unchanged too (distance 0, success True).

    Cost per iteration: one linearisation (a forward pass and ``K - 1``
    input-gradient passes for ``K`` classes, one per step in FAB-T) and one
    forward pass to check the new iterate; ``queries`` counts two model
    evaluations per iteration plus the clean forward pass. The bookkeeping
    (best point, best distance, success masks) stays in NDArray masks: the
    loop never synchronises with the MXNet engine. ``iterations`` is
    ``steps * restarts`` for every sample.

    Examples
    --------
    >>> attack = FAB(norm="l2", steps=100)
    >>> result = attack(model, x, y)
    >>> result.success.mean(), np.median(result.distance)
    >>> FAB(norm="linf", eps=8 / 255, restarts=3)(model, x, y).success.mean()
    """

    name = "fab"
    norms = ("linf", "l2")
    supports_targeted = False
    kind = AttackKind.MINIMUM_NORM

    def __init__(self, *, norm: str = "linf", steps: int = 100, restarts: int = 1, alpha_max: float = 0.1,
                 eta: float = 1.05, beta: float = 0.9, eps: Optional[float] = None,
                 restart_eps: Optional[float] = None, seed: int = 0) -> None:
        super().__init__(norm=norm, eps=eps, seed=seed)
        self.steps = check_int("steps", steps)
        self.restarts = check_int("restarts", restarts)
        self.alpha_max = check_positive("alpha_max", alpha_max, allow_zero=True, upper=1.0)
        self.eta = check_positive("eta", eta)
        if self.eta < 1.0:
            raise ConfigError(f"eta must be >= 1, got {eta!r}")
        self.beta = check_positive("beta", beta, upper=1.0)
        self.restart_eps = None if restart_eps is None else check_positive("restart_eps", restart_eps)
        if self.restarts > 1 and self.restart_eps is None and self.eps is None:
            raise ConfigError(f"restarts={restarts!r} needs restart_eps (or eps) to scale the random starts")

    def _queries(self, iterations: np.ndarray) -> np.ndarray:
        return 2 * iterations + 1

    def _run(self, model: mx.gluon.Block, x: nd.NDArray, y: nd.NDArray, target: Optional[nd.NDArray],
             rngs: Sequence[np.random.Generator]) -> Tuple[nd.NDArray, int]:
        if target is not None:  # the base rejects it first; kept for direct callers
            raise ConfigError(f"{self.name} has no targeted mode")
        return self._run_all(model, x, y, [None], rngs)

    # ------------------------------------------------------------- the runs
    def _run_all(self, model: mx.gluon.Block, x: nd.NDArray, y: nd.NDArray, aims: List[Optional[nd.NDArray]],
                 rngs: Sequence[np.random.Generator]) -> Tuple[nd.NDArray, int]:
        """Run FAB ``restarts`` times per entry of ``aims`` (None: nearest boundary, else target classes).

        The runs share the best points and distances; success is always
        misclassification. The first run towards an aim starts at ``x``, the
        others at random points.
        """
        low, high = model.bounds
        with autograd.pause(train_mode=False):
            clean_pred = model(x).argmax(axis=1)
        best = nd.where(clean_pred != y, nd.zeros_like(y), nd.full(y.shape, np.inf, ctx=x.context))
        best_x = x.copy()
        for aim in aims:
            for restart in range(self.restarts):
                start = x if restart == 0 else self._random_start(x, best, low, high, rngs)
                best, best_x = self._single_run(model, x, y, aim, start, best, best_x)
        return best_x, self.steps * self.restarts * len(aims)

    def _random_start(
        self, x: nd.NDArray, best: nd.NDArray, low: float, high: float, rngs: Sequence[np.random.Generator]
    ) -> nd.NDArray:
        """``x`` plus a random direction of norm ``min(best, scale) / 2`` (the paper's restart)."""
        scale = self.restart_eps if self.restart_eps is not None else self.eps
        unit = self.norm.random_start(rngs, x.shape[1:], 1.0)  # only the direction is used
        flat = unit.reshape(len(unit), -1)
        size = self.norm.distance_like(flat)
        unit = unit / (size.reshape((-1,) + (1,) * (unit.ndim - 1)) + _TINY)
        radius = 0.5 * nd.minimum(best, nd.full(best.shape, scale, ctx=x.context))
        return nd.clip(x + _per_sample(radius, x) * nd.array(unit, ctx=x.context), low, high)

    def _single_run(
        self,
        model: mx.gluon.Block,
        x: nd.NDArray,
        y: nd.NDArray,
        aim: Optional[nd.NDArray],
        start: nd.NDArray,
        best: nd.NDArray,
        best_x: nd.NDArray,
    ) -> Tuple[nd.NDArray, nd.NDArray]:
        """``steps`` FAB iterations from ``start``; returns the updated best distances and points."""
        low, high = model.bounds
        n = x.shape[0]
        x0 = x.reshape((n, -1))
        x1 = start
        for _ in range(self.steps):  # every sample runs every step, masked: no engine synchronisation
            margin, grad = self._hyperplane(model, x1, y, aim)
            w = grad.reshape((n, -1))
            xf = x1.reshape((n, -1))
            # The linearised boundary: margin + <w, z - x1> = 0, i.e. <w, z - p> = c_p for a point p.
            c_cur = -margin
            c_orig = -margin - nd.sum(w * (x0 - xf), axis=1)
            both = box_projection(nd.concat(xf, x0, dim=0), nd.concat(w, w, dim=0),
                                  nd.concat(c_cur, c_orig, dim=0), low, high, self.norm)
            d_cur, d_orig = both[:n], both[n:]
            size_cur = nd.maximum(self.norm.distance(d_cur), nd.full((n,), 1e-8, ctx=x.context))
            size_orig = nd.maximum(self.norm.distance(d_orig), nd.full((n,), 1e-8, ctx=x.context))
            alpha = nd.clip(size_cur / (size_cur + size_orig), 0.0, self.alpha_max).reshape((-1, 1))
            moved = (1 - alpha) * (xf + self.eta * d_cur) + alpha * (x0 + self.eta * d_orig)
            x1 = nd.clip(moved, low, high).reshape(x.shape)

            with autograd.pause(train_mode=False):
                pred = model(x1).argmax(axis=1)
            adversarial = pred != y
            distance = self.norm.distance(x1 - x)
            better = adversarial * (distance < best)
            best = nd.where(better, distance, best)
            best_x = nd.where(_per_sample(better, x).broadcast_like(x), x1, best_x)
            back = x + self.beta * (x1 - x)
            x1 = nd.where(_per_sample(adversarial, x).broadcast_like(x), back, x1)
        return best, best_x

    def _hyperplane(
        self, model: mx.gluon.Block, x1: nd.NDArray, y: nd.NDArray, aim: Optional[nd.NDArray]
    ) -> Tuple[nd.NDArray, nd.NDArray]:
        """The margin (N,) and its input gradient at ``x1`` of the closest linearised boundary.

        Untargeted: among ``z_k - z_y`` for every ``k != y``, the one with the
        smallest ``|margin| / ||grad||_*`` (dual norm). Towards a target
        class ``t`` (FAB-T): ``z_t - z_y``.
        """
        xv = x1.copy()
        xv.attach_grad()
        with gradient_recording(model):
            logits = model(xv)
            num_classes = logits.shape[1]
            true_logit = nd.pick(logits, y, axis=1)
            if aim is None:
                # The j-th class other than y is j, or j + 1 from y on.
                margins = [nd.pick(logits, j + (y <= j), axis=1) - true_logit for j in range(num_classes - 1)]
            else:
                margins = [nd.pick(logits, aim, axis=1) - true_logit]
        best_dist = nd.full(y.shape, np.inf, ctx=x1.context)
        best_margin = nd.zeros_like(y)
        best_grad = nd.zeros_like(x1)
        for j, margin in enumerate(margins):
            (grad,) = autograd.grad(margin, [xv], retain_graph=j < len(margins) - 1)
            value = margin.detach()
            dist = nd.abs(value) / (self.norm.dual_norm(grad) + _TINY)
            closer = dist < best_dist
            best_dist = nd.where(closer, dist, best_dist)
            best_margin = nd.where(closer, value, best_margin)
            best_grad = nd.where(_per_sample(closer, grad).broadcast_like(grad), grad, best_grad)
        return best_margin, best_grad


class FABT(FAB):
    """FAB-T: FAB towards each of the most likely wrong classes (Croce & Hein 2020).

    The targeted FAB of AutoAttack: for ``j = 1 .. n_target_classes`` it runs
    :class:`FAB` with the single linearised boundary ``z_t = z_y`` of the
    ``j``-th highest scoring class ``t`` other than ``y`` (on the clean
    logits), ``restarts`` times per class, and keeps per sample the smallest
    perturbation that misclassifies it (whatever the predicted class).
    Untargeted from the caller's view, like :class:`~.apgdt.APGDT`.

    Parameters
    ----------
    n_target_classes : int
        Target classes tried (default 9), capped at ``num_classes - 1``.
    norm, steps, restarts, alpha_max, eta, beta, eps, restart_eps, seed
        As in :class:`FAB`; ``steps`` and ``restarts`` are per target class.

    Notes
    -----
    Shapes as in :class:`FAB`. ``iterations`` is ``steps * restarts *
    n_target_classes`` (capped) for every sample; each linearisation costs
    one input-gradient pass only.

    Examples
    --------
    >>> attack = FABT(norm="linf", eps=8 / 255, n_target_classes=9)
    >>> result = attack(model, x, y)
    >>> result.success.mean(), result.distance.max()
    """

    name = "fab-t"
    supports_targeted = False

    def __init__(self, *, norm: str = "linf", steps: int = 100, n_target_classes: int = 9, restarts: int = 1,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, eps: Optional[float] = None,
                 restart_eps: Optional[float] = None, seed: int = 0) -> None:
        super().__init__(norm=norm, steps=steps, restarts=restarts, alpha_max=alpha_max, eta=eta, beta=beta,
                         eps=eps, restart_eps=restart_eps, seed=seed)
        self.n_target_classes = check_int("n_target_classes", n_target_classes)

    def _run(self, model: mx.gluon.Block, x: nd.NDArray, y: nd.NDArray, target: Optional[nd.NDArray],
             rngs: Sequence[np.random.Generator]) -> Tuple[nd.NDArray, int]:
        if target is not None:  # the base rejects it first; kept for direct callers
            raise ConfigError(f"{self.name} has no targeted mode")
        with autograd.pause(train_mode=False):
            logits = model(x)
        count = min(self.n_target_classes, logits.shape[1] - 1)
        others = nd.where(nd.one_hot(y, logits.shape[1]), nd.full(logits.shape, -np.inf, ctx=x.context), logits)
        ranked = nd.topk(others, axis=1, k=count, ret_typ="indices").reshape((x.shape[0], count))  # best first
        aims: List[Optional[nd.NDArray]] = [ranked[:, j] for j in range(count)]
        return self._run_all(model, x, y, aims, rngs)

    def _queries(self, iterations: np.ndarray) -> np.ndarray:
        return super()._queries(iterations) + 1  # plus the clean pass that ranks the targets

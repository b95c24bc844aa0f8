"""Projected steepest ascent: the one loop behind every gradient attack and inner maximisation.

An ascent maximises a per-sample objective inside an epsilon-ball (and the
model's bounds). What varies between PGD, BIM, FGSM, MI-FGSM, the training
methods' inner maximisation and the adaptive detector attacks is plugged in:

* the **gradient** of the objective, a callable ``point -> (grad, aux)``
  supplied by the caller (the attack's loss, the training objective, the
  detector-aware objective), so that the engine never knows the loss;
* the **norm** (:mod:`.norms`), which owns the random start, the steepest
  direction and the projection;
* the **step rule**: :class:`FixedStep` (Madry et al. 2018,
  https://arxiv.org/abs/1706.06083), :class:`MomentumStep` (MI-FGSM, Dong et
  al. 2018, https://arxiv.org/abs/1710.06081), or APGD's adaptive step with
  momentum and checkpoints (:class:`AdaptiveStep`, Croce & Hein 2020,
  https://arxiv.org/abs/2003.01690);
* **restarts** and the **best-point bookkeeping** (:class:`BestPoint`,
  :func:`best_of_restarts`).

The float32 operations are those the attacks ran before the engine existed,
in the same order, so that results are bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from mxnet import nd

from ..validation import check_int
from .norms import Norm

__all__ = [
    "GradientFn", "ObserveFn", "StepRule", "FixedStep", "MomentumStep", "BestPoint", "ascend", "ball_step",
    "best_of_restarts", "AdaptiveStep", "apgd_checkpoints",
]

_TINY = 1e-12

#: ``gradient(point) -> (grad, aux)``: the objective's input gradient at ``point``; ``aux`` goes to the observer.
GradientFn = Callable[[nd.NDArray], Tuple[nd.NDArray, Any]]
#: ``observe(point, aux)``: called at every iterate before its step, then once with the final point and None.
ObserveFn = Callable[[nd.NDArray, Any], None]


def _per_sample(values: nd.NDArray, like: nd.NDArray) -> nd.NDArray:
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


@dataclass(frozen=True)
class FixedStep:
    """Steps of a fixed size along the norm's steepest-ascent direction of the gradient (PGD, BIM, FGSM).

    Parameters
    ----------
    step_size : float
        Absolute step size, in pixel units.
    """

    step_size: float

    def begin(self, x: nd.NDArray) -> Dict[str, Any]:
        """Per-run state (none for a fixed step)."""
        return {}

    def direction(self, norm: Norm, grad: nd.NDArray, state: Dict[str, Any]) -> nd.NDArray:
        """The unit step direction: the norm's steepest ascent of ``grad``."""
        return norm.direction(grad)


@dataclass(frozen=True)
class MomentumStep(FixedStep):
    """MI-FGSM's step (Dong et al. 2018): the steepest direction of a momentum of normalised gradients.

    ``g <- decay * g + grad / mean(|grad|)`` per sample, then the step follows
    ``norm.direction(g)``.

    Parameters
    ----------
    step_size : float
        Absolute step size, in pixel units.
    decay : float
        Momentum decay factor ``mu``.
    """

    decay: float = 1.0

    def begin(self, x: nd.NDArray) -> Dict[str, Any]:
        """The momentum, zero at the start of a run."""
        return {"momentum": nd.zeros_like(x)}

    def direction(self, norm: Norm, grad: nd.NDArray, state: Dict[str, Any]) -> nd.NDArray:
        """Accumulate the normalised gradient into the momentum and return its steepest direction."""
        scale = nd.mean(nd.abs(grad.reshape((grad.shape[0], -1))), axis=1) + _TINY
        state["momentum"] = self.decay * state["momentum"] + grad / _per_sample(scale, grad)
        return norm.direction(state["momentum"])


#: A step rule: :class:`FixedStep` or a subclass with its own ``begin`` and ``direction``.
StepRule = FixedStep


def ball_step(norm: Norm, delta: nd.NDArray, direction: nd.NDArray, step_size: float, eps: float) -> nd.NDArray:
    """``project(delta + step_size * direction)`` onto the eps-ball (no box clip)."""
    return norm.project(delta + step_size * direction, eps)


def ascend(
    gradient: GradientFn,
    x: nd.NDArray,
    start: nd.NDArray,
    *,
    norm: Norm,
    eps: float,
    steps: int,
    rule: StepRule,
    bounds: Tuple[float, float],
    observe: Optional[ObserveFn] = None,
) -> nd.NDArray:
    """Projected steepest ascent from ``x + start``; returns the last iterate ``x + delta``.

    ``delta`` starts at ``clip(x + start, low, high) - x`` and each step is
    ``delta <- clip(x + project(delta + step * d(grad)), low, high) - x``,
    with ``d`` the rule's direction.

    Parameters
    ----------
    gradient : callable
        ``gradient(point) -> (grad, aux)`` of the objective to ascend.
    x : NDArray
        Clean inputs (N, ...).
    start : NDArray
        Starting perturbation (zeros, or a random point of the ball).
    norm : Norm
        The threat model.
    eps : float
        Radius of the ball.
    steps : int
        Gradient steps.
    rule : FixedStep
        The step rule (its ``step_size`` and ``direction``).
    bounds : (float, float)
        The valid input range.
    observe : callable, optional
        ``observe(point, aux)`` at each iterate (with the gradient's ``aux``),
        then ``observe(final_point, None)``: the hook for best-point bookkeeping.
    """
    low, high = bounds
    state = rule.begin(x)
    delta = nd.clip(x + start, low, high) - x
    for _ in range(steps):
        point = x + delta
        grad, aux = gradient(point)
        if observe is not None:
            observe(point, aux)
        delta = ball_step(norm, delta, rule.direction(norm, grad, state), rule.step_size, eps)
        delta = nd.clip(x + delta, low, high) - x
    final = x + delta
    if observe is not None:
        observe(final, None)
    return final


class BestPoint:
    """Per sample, the point of highest key offered so far (strictly higher replaces).

    Parameters
    ----------
    initial : NDArray
        What :attr:`x` holds before any offer beats ``-inf``.
    """

    def __init__(self, initial: nd.NDArray) -> None:
        self.x = initial
        self.key = nd.full((initial.shape[0],), -np.inf, ctx=initial.context)

    def offer(self, point: nd.NDArray, key: nd.NDArray) -> None:
        """Keep ``point`` where ``key`` beats the best key so far."""
        better = _per_sample(key > self.key, point).broadcast_like(point)
        self.x = nd.where(better, point, self.x)
        self.key = nd.maximum(key, self.key)


def best_of_restarts(
    x: nd.NDArray, restarts: int, run: Callable[[int], nd.NDArray], score: Callable[[nd.NDArray], nd.NDArray]
) -> nd.NDArray:
    """Run ``run(r)`` for each restart ``r`` and keep, per sample, the point of highest ``score``.

    Parameters
    ----------
    x : NDArray
        Clean inputs: the answer where no restart scores above ``-inf``.
    restarts : int
        Number of runs.
    run : callable
        ``run(r) -> x_adv`` for restart ``r``.
    score : callable
        ``score(x_adv) -> (N,)``, higher is better (``+inf`` for a success keeps the first success).
    """
    best = BestPoint(x)
    for r in range(restarts):
        x_adv = run(r)
        best.offer(x_adv, score(x_adv))
    return best.x


# ------------------------------------------------------------------ APGD's adaptive step
#: ``evaluate(point) -> (grad, loss, success)``, all on the device.
EvaluateFn = Callable[[nd.NDArray], Tuple[nd.NDArray, nd.NDArray, nd.NDArray]]
#: ``observe(step, x, loss, x_best, loss_best, eta, found)``: APGD's per-step trace hook.
ApgdObserveFn = Callable[..., None]


def apgd_checkpoints(steps: int) -> List[int]:
    """The iterations after which APGD may halve its step size.

    The paper (Section 3.2) places the checkpoints at ``w_j = ceil(p_j *
    N_iter)`` with ``p_0 = 0``, ``p_1 = 0.22`` and ``p_{j+1} = p_j +
    max(p_j - p_{j-1} - 0.03, 0.06)``. The reference implementation realises
    this with whole-step gaps, which is what runs in AutoAttack and what we
    follow: the first gap is ``floor(0.22 * N_iter)`` steps, each later gap is
    ``floor(0.03 * N_iter)`` steps shorter, and no gap is shorter than
    ``n_iter_min = floor(0.06 * N_iter)`` (each of the three at least 1).
    The two agree for ``N_iter = 100``; for other budgets the floors make the
    reference's checkpoints differ from ``ceil(p_j * N_iter)`` (50 steps:
    11, 21, 30, 38, 45 against 11, 21, 29, 35, 40, ...). A checkpoint at the
    very last step is kept, as in the reference: it changes nothing returned.

    Parameters
    ----------
    steps : int
        The iteration budget ``N_iter``.

    Returns
    -------
    list of int
        Increasing checkpoint iterations (1-based step counts) in ``[1, steps]``.

    Examples
    --------
    >>> apgd_checkpoints(100)
    [22, 41, 57, 70, 80, 87, 93, 99]
    """
    steps = check_int("steps", steps)
    gap = max(22 * steps // 100, 1)  # integer arithmetic equals int(0.22 * steps) in floats (checked to 1e5)
    shrink = max(3 * steps // 100, 1)
    floor = max(6 * steps // 100, 1)
    out: List[int] = []
    at = gap
    while at <= steps:
        out.append(at)
        gap = max(gap - shrink, floor)
        at += gap
    return out


@dataclass(frozen=True)
class AdaptiveStep:
    """APGD's step rule (Croce & Hein 2020, Algorithm 1): momentum, checkpoints, step halving.

    See :class:`~gluon_robust.attacks.apgd.APGD` for the decisions, taken as
    the authors' reference implementation takes them.

    Parameters
    ----------
    eps : float
        Radius of the ball; the first step size is ``2 * eps``.
    steps : int
        Iterations per run, ``N_iter``.
    rho : float
        Checkpoint threshold on the fraction of loss-increasing steps.
    alpha : float
        Weight of the new gradient step against the momentum term.
    """

    eps: float
    steps: int
    rho: float = 0.75
    alpha: float = 0.75

    def run(
        self, evaluate: EvaluateFn, project: Callable[[nd.NDArray], nd.NDArray], norm: Norm, start: nd.NDArray,
        observe: Optional[ApgdObserveFn] = None,
    ) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
        """One run from ``start``; returns ``(x_adv, best_loss, found)``, all on the device.

        ``project`` maps a point onto the eps-ball and the bounds; ``observe``
        gets the starting point (step 0) and every step.
        """
        n = start.shape[0]
        ctx = start.context
        checkpoints = set(apgd_checkpoints(self.steps))
        x_cur = x_prev = start
        grad, loss, found = evaluate(x_cur)
        s = _ApgdState(x_found=x_cur, x_best=x_cur, grad_best=grad, loss_best=loss, found=found,
                       eta=nd.full((n,), 2.0 * self.eps, ctx=ctx), increases=nd.zeros((n,), ctx=ctx),
                       loss_prev=nd.zeros((n,), ctx=ctx),  # the reference's loss history starts at zero
                       best_at_check=loss,
                       halved_at_check=nd.ones((n,), ctx=ctx))  # no-improvement test off at the first checkpoint
        last_check = 0
        per_sample = (-1,) + (1,) * (start.ndim - 1)
        if observe is not None:
            observe(0, x_cur, loss, s.x_best, s.loss_best, s.eta, s.found)
        for k in range(1, self.steps + 1):
            z = project(x_cur + s.eta.reshape(per_sample) * norm.direction(grad))
            if k > 1:  # the first step has no momentum: x_1 = z
                z = project(x_cur + self.alpha * (z - x_cur) + (1.0 - self.alpha) * (x_cur - x_prev))
            x_prev, x_cur = x_cur, z
            grad, loss, success = evaluate(x_cur)
            s.record(x_cur, grad, loss, success, count=self.steps > 1)
            x_seen = x_cur
            if k in checkpoints:
                x_cur, grad = s.checkpoint(x_cur, grad, self.rho * (k - last_check))
                last_check = k
            if observe is not None:
                observe(k, x_seen, loss, s.x_best, s.loss_best, s.eta, s.found)
        return nd.where(s.found, s.x_found, s.x_best), s.loss_best, s.found


@dataclass
class _ApgdState:
    """The per-sample bookkeeping of one APGD run (every field an NDArray on the device)."""

    x_found: nd.NDArray
    x_best: nd.NDArray
    grad_best: nd.NDArray
    loss_best: nd.NDArray
    found: nd.NDArray
    eta: nd.NDArray
    increases: nd.NDArray
    loss_prev: nd.NDArray
    best_at_check: nd.NDArray
    halved_at_check: nd.NDArray

    def record(self, x: nd.NDArray, grad: nd.NDArray, loss: nd.NDArray, success: nd.NDArray, count: bool) -> None:
        """Count a loss increase (unless ``count`` is off: one step compares with itself) and keep the best."""
        if count:
            self.increases = self.increases + (loss > self.loss_prev)
        self.loss_prev = loss
        improved = loss > self.loss_best
        self.x_best = nd.where(improved, x, self.x_best)
        self.grad_best = nd.where(improved, grad, self.grad_best)
        self.loss_best = nd.where(improved, loss, self.loss_best)
        self.x_found = nd.where(success, x, self.x_found)
        self.found = nd.maximum(self.found, success)

    def checkpoint(self, x: nd.NDArray, grad: nd.NDArray, threshold: float) -> Tuple[nd.NDArray, nd.NDArray]:
        """Halve the step and reset to the best point where the run oscillates or is stuck."""
        oscillating = self.increases <= threshold
        stuck = (1 - self.halved_at_check) * (self.best_at_check >= self.loss_best)
        halve = nd.maximum(oscillating, stuck)
        self.eta = nd.where(halve, 0.5 * self.eta, self.eta)
        x = nd.where(halve, self.x_best, x)
        grad = nd.where(halve, self.grad_best, grad)
        self.halved_at_check, self.best_at_check = halve, self.loss_best
        self.increases = nd.zeros_like(self.increases)
        return x, grad

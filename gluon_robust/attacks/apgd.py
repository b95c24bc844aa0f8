"""Auto-PGD: step-size-free projected gradient ascent with momentum.

Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML,
https://arxiv.org/abs/2003.01690.

APGD replaces PGD's fixed step size by a budget-aware schedule: it starts
with a step of ``2 * eps``, adds momentum, and at precomputed checkpoints
halves the step of every sample whose loss has stopped improving, restarting
that sample from the best point found so far. Distance: L-inf or L2.
Targeted and untargeted; the targeted-DLR variant that picks its own targets
is :class:`~gluon_robust.attacks.apgdt.APGDT`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import nd

from ..validation import check_int, check_positive
from .base import Attack, input_gradient
from .losses import LossFn, get_loss

__all__ = ["APGD", "apgd_checkpoints"]

# The checkpoint schedule of the paper in hundredths of the budget, so that it
# is exact in integer arithmetic: p_1 = 0.22, the gap shrinks by 0.03 per
# checkpoint and never falls below 0.06.
_FIRST, _SHRINK, _MIN_GAP = 22, 3, 6


def apgd_checkpoints(steps: int) -> List[int]:
    """The iterations at which APGD may halve its step size.

    ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, keeping the distinct
    values in ``(0, steps)`` (a check at the last step could change nothing).

    Parameters
    ----------
    steps : int
        The iteration budget ``N_iter``.

    Returns
    -------
    list of int
        Increasing checkpoint iterations.

    Examples
    --------
    >>> apgd_checkpoints(100)
    [22, 41, 57, 70, 80, 87, 93, 99]
    """
    steps = check_int("steps", steps)
    out: List[int] = []
    prev, cur = 0, _FIRST  # p_{j-1}, p_j in hundredths
    while True:
        w = -(-cur * steps // 100)  # ceil(p_j * steps), exact
        if w >= steps:
            return out
        if not out or w > out[-1]:
            out.append(w)
        prev, cur = cur, cur + max(cur - prev - _SHRINK, _MIN_GAP)


class APGD(Attack):
    """Auto-PGD with the cross-entropy or DLR loss (Croce & Hein 2020).

    Each run starts at a random point of the eps-ball (``x_0``), takes one
    plain step ``x_1 = P(x_0 + eta * d(grad))`` with ``eta = 2 * eps`` and
    then momentum steps ::

        z       = P(x_k + eta * d(grad f(x_k)))
        x_{k+1} = P(x_k + alpha * (z - x_k) + (1 - alpha) * (x_k - x_{k-1}))

    where ``d`` is the norm's steepest-ascent direction and ``P`` the
    projection onto the eps-ball and the bounds. At each checkpoint of
    :func:`apgd_checkpoints` a sample's step size is halved and its iterate
    reset to its best point when either fewer than a ``rho`` fraction of the
    steps since the last checkpoint increased the loss, or its step size was
    not halved at the last checkpoint and its best loss has not improved
    since. Every decision is a per-sample mask: the step loop never waits on
    the device.

    Per sample the result is the last successful iterate if any run
    succeeded, else the point of highest loss. Restarts run only on the
    samples not yet fooled (one device sync per restart to find them).

    Parameters
    ----------
    eps : float
        Radius of the threat model, in pixel units.
    norm : str
        ``"linf"`` (default) or ``"l2"``.
    steps : int
        Iterations per run, ``N_iter`` (default 100).
    restarts : int
        Runs from fresh random starts (default 1).
    loss : str or callable
        ``"ce"`` (default), ``"dlr"``, or ``"margin"``/``"cw"``, or
        ``f(logits, y, target) -> (N,)`` to ascend. Targeted calls use the
        targeted form of the loss.
    rho : float
        Checkpoint threshold on the fraction of loss-increasing steps (0.75).
    alpha : float
        Weight of the new gradient step against the momentum term (0.75).
    random_start : bool
        Start each run from a uniform point of the ball (default True);
        without it every restart repeats the first.
    eot_samples : int
        Gradients averaged per step, for randomised models (EOT).
    seed : int
        Seed of the random starts.

    Notes
    -----
    Shapes: ``x`` is (N, C, H, W) inside ``model.bounds``; ``y`` and
    ``target`` are (N,). ``iterations`` counts gradient steps per sample
    (``steps`` per run the sample took part in); ``queries`` adds the
    gradient at each run's starting point and counts EOT passes.

    Examples
    --------
    >>> attack = APGD(eps=8 / 255, loss="dlr")
    >>> result = attack(model, x, y)                     # untargeted
    >>> result = attack(model, x, y, target=t)           # targeted
    >>> result.success.mean(), result.iterations
    """

    name = "apgd"
    norms = ("linf", "l2")

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        steps: int = 100,
        restarts: int = 1,
        loss: str | LossFn = "ce",
        rho: float = 0.75,
        alpha: float = 0.75,
        random_start: bool = True,
        eot_samples: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, seed=seed)
        self.steps = check_int("steps", steps)
        self.restarts = check_int("restarts", restarts)
        self.loss = get_loss(loss)
        self.rho = check_positive("rho", rho, upper=1.0)
        self.alpha = check_positive("alpha", alpha, upper=1.0)
        self.random_start = bool(random_start)
        self.eot_samples = check_int("eot_samples", eot_samples)

    # ------------------------------------------------------------ contract
    def _run(
        self,
        model: mx.gluon.Block,
        x: nd.NDArray,
        y: nd.NDArray,
        target: Optional[nd.NDArray],
        rngs: Sequence[np.random.Generator],
    ) -> Tuple[nd.NDArray, np.ndarray]:
        return self._run_all(model, x, y, [target] * self.restarts, target is not None, rngs)

    def _queries(self, iterations: np.ndarray) -> np.ndarray:
        # Each run evaluates the gradient at its start and after each step.
        runs = iterations // self.steps
        return (iterations + runs) * self.eot_samples

    # ---------------------------------------------------------------- runs
    def _run_all(
        self,
        model: mx.gluon.Block,
        x: nd.NDArray,
        y: nd.NDArray,
        aims: Sequence[Optional[nd.NDArray]],
        targeted: bool,
        rngs: Sequence[np.random.Generator],
    ) -> Tuple[nd.NDArray, np.ndarray]:
        """Run :meth:`_optimize` once per entry of ``aims`` on the samples not yet fooled.

        ``aims[i]`` is the target of the loss in run ``i`` (None: untargeted
        loss). With ``targeted`` success means reaching that target, else
        being misclassified. Per sample the first success is kept, else the
        point of highest loss over all runs.
        """
        n = x.shape[0]
        best_x = x
        best_loss = nd.full((n,), -np.inf, ctx=x.context)
        done = np.zeros(n, dtype=bool)
        iterations = np.zeros(n, dtype=np.int64)
        for i, aim in enumerate(aims):
            todo = np.flatnonzero(~done)
            if todo.size == 0:
                break
            if todo.size == n:
                index = None
                xs, ys, aim_s, prev_x, prev_loss = x, y, aim, best_x, best_loss
            else:
                index = nd.array(todo, ctx=x.context, dtype="int64")
                xs, ys, prev_x, prev_loss = x.take(index), y.take(index), best_x.take(index), best_loss.take(index)
                aim_s = None if aim is None else aim.take(index)
            adv, loss, found = self._optimize(model, xs, ys, aim_s, targeted, [rngs[j] for j in todo])
            iterations[todo] += self.steps
            keep = nd.maximum(found, loss > prev_loss)
            merged_x = nd.where(keep, adv, prev_x)
            merged_loss = nd.where(found, nd.full(loss.shape, np.inf, ctx=loss.context), nd.maximum(loss, prev_loss))
            if index is None:
                best_x, best_loss = merged_x, merged_loss
            else:
                best_x[index] = merged_x
                best_loss[index] = merged_loss
            if i + 1 < len(aims):
                done[todo] = found.asnumpy() > 0  # the one sync per run: who is left to attack
        return best_x, iterations

    # ----------------------------------------------------------- one run
    def _optimize(
        self,
        model: mx.gluon.Block,
        x: nd.NDArray,
        y: nd.NDArray,
        aim: Optional[nd.NDArray],
        targeted: bool,
        rngs: Sequence[np.random.Generator],
    ) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
        """One APGD run; returns ``(x_adv, best_loss, found)``, all on the device."""
        low, high = model.bounds
        n = x.shape[0]
        ctx = x.context
        checkpoints = set(apgd_checkpoints(self.steps))

        def project(point: nd.NDArray) -> nd.NDArray:
            return nd.clip(x + self.norm.project(point - x, self.eps), low, high)

        def evaluate(point: nd.NDArray) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
            grad, value, logits = input_gradient(model, point, y, aim, self.loss, self.eot_samples)
            pred = logits.argmax(axis=1)
            success = pred == aim if targeted else pred != y
            return grad, value, success

        start = x
        if self.random_start:
            noise = self.norm.random_start(rngs, tuple(x.shape[1:]), self.eps)
            start = nd.clip(x + nd.array(noise, ctx=ctx, dtype="float32"), low, high)
        x_cur = x_prev = start
        grad, loss, found = evaluate(x_cur)
        x_found = x_best = x_cur
        grad_best, loss_best = grad, loss

        eta = nd.full((n,), 2.0 * self.eps, ctx=ctx)
        increases = nd.zeros((n,), ctx=ctx)
        loss_at_check = loss_best
        halved_at_check = nd.zeros((n,), ctx=ctx)
        last_check = 0
        per_sample = (-1,) + (1,) * (x.ndim - 1)

        for k in range(1, self.steps + 1):
            z = project(x_cur + eta.reshape(per_sample) * self.norm.direction(grad))
            if k > 1:  # the first step has no momentum: x_1 = z
                z = project(x_cur + self.alpha * (z - x_cur) + (1.0 - self.alpha) * (x_cur - x_prev))
            x_prev, x_cur = x_cur, z
            grad, new_loss, success = evaluate(x_cur)
            increases = increases + (new_loss > loss)
            loss = new_loss

            improved = loss > loss_best
            x_best = nd.where(improved, x_cur, x_best)
            grad_best = nd.where(improved, grad, grad_best)
            loss_best = nd.where(improved, loss, loss_best)
            x_found = nd.where(success, x_cur, x_found)
            found = nd.maximum(found, success)

            if k in checkpoints:
                oscillating = increases < self.rho * (k - last_check)
                stuck = (1 - halved_at_check) * (loss_best <= loss_at_check)
                halve = nd.maximum(oscillating, stuck)
                eta = nd.where(halve, 0.5 * eta, eta)
                x_cur = nd.where(halve, x_best, x_cur)
                grad = nd.where(halve, grad_best, grad)
                loss = nd.where(halve, loss_best, loss)
                halved_at_check, loss_at_check = halve, loss_best
                increases = nd.zeros_like(increases)
                last_check = k

        return nd.where(found, x_found, x_best), loss_best, found

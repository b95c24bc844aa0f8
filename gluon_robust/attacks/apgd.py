"""Auto-PGD: step-size-free projected gradient ascent with momentum.

Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML,
https://arxiv.org/abs/2003.01690 (Algorithm 1, Section 3).

APGD replaces PGD's fixed step size by a budget-aware schedule: it starts
with a step of ``2 * eps``, adds momentum, and at precomputed checkpoints
halves the step of every sample whose loss has stopped improving, restarting
that sample from the best point found so far. Distance: L-inf or L2.
Targeted and untargeted; the targeted-DLR variant that picks its own targets
is :class:`~gluon_robust.attacks.apgdt.APGDT`.

The algorithm follows the authors' reference implementation (AutoAttack,
``autopgd_base.py``) decision for decision, wherever that is more specific
than the paper's pseudo-code: see :class:`APGD` for the list, and
``tests/test_reference_trajectories.py`` for the iterate-by-iterate check
against an independent NumPy implementation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import nd

from ..errors import ConfigError
from ..validation import check_int, check_positive
from .base import Attack, input_gradient
from .engine import AdaptiveStep, apgd_checkpoints
from .losses import LossFn, get_loss
from .norms import Norm, get_norm

__all__ = ["APGD", "APGDStep", "apgd_checkpoints", "apgd_random_start"]

logger = logging.getLogger(__name__)


def apgd_random_start(
    rngs: Sequence[np.random.Generator], shape: Tuple[int, ...], eps: float, norm: str | Norm
) -> np.ndarray:
    """APGD's random starting perturbation, one per sample, float32 (N, *shape).

    As in the reference implementation: L-inf draws ``t ~ U[-1, 1]^d``
    (one ``rng.uniform(-1, 1, size=shape)``) and returns
    ``eps * t / ||t||_inf``, so that the largest coordinate is exactly
    ``eps``; L2 draws ``t ~ N(0, I)`` (one ``rng.standard_normal(shape)``)
    and returns ``eps * t / ||t||_2``, a point of the sphere. Both divide by
    the norm plus ``1e-12``. The caller clips ``x + delta`` to the bounds.
    The draw is the norm's :meth:`~.norms.Norm.sphere_start`.
    """
    return get_norm(norm).sphere_start(rngs, shape, eps)


@dataclass(frozen=True)
class APGDStep:
    """One observation of an APGD run, handed to the ``trace`` hook (host copies).

    Attributes
    ----------
    run : int
        Index of the run: restart ``r`` of :class:`APGD`, or ``j * restarts + r``
        for target ``j`` of :class:`~gluon_robust.attacks.apgdt.APGDT`.
    step : int
        0 for the starting point, ``k`` after gradient step ``k`` (and its checkpoint, if any).
    samples : numpy.ndarray of int, (M,)
        Rows of the (padded) batch taking part in this run.
    x : numpy.ndarray, (M, ...)
        The iterate ``x^(k)`` the step produced, before any checkpoint reset.
    loss : numpy.ndarray, (M,)
        The loss at ``x``.
    x_best, loss_best : numpy.ndarray
        The highest-loss point of the run so far and its loss.
    eta : numpy.ndarray, (M,)
        The step size of the next step (after this step's checkpoint).
    found : numpy.ndarray of bool, (M,)
        Whether an iterate of this run (the start included) has succeeded.
    """

    run: int
    step: int
    samples: np.ndarray
    x: np.ndarray
    loss: np.ndarray
    x_best: np.ndarray
    loss_best: np.ndarray
    eta: np.ndarray
    found: np.ndarray


#: The type of the ``trace`` hook.
TraceFn = Callable[[APGDStep], None]


class APGD(Attack):
    """Auto-PGD with the cross-entropy or DLR loss (Croce & Hein 2020).

    Each run starts at a random point ``x^(0)`` (:func:`apgd_random_start`),
    takes one plain step ``x^(1) = P(x^(0) + eta * d(grad))`` with
    ``eta = 2 * eps`` and then momentum steps ::

        z       = P(x^(k) + eta * d(grad f(x^(k))))
        x^(k+1) = P(x^(k) + alpha * (z - x^(k)) + (1 - alpha) * (x^(k) - x^(k-1)))

    where ``d`` is the norm's steepest-ascent direction (sign, or the
    L2-normalised gradient) and ``P`` the projection onto the eps-ball and
    the bounds. After each step the run keeps the point of highest loss
    (``x_best``, its gradient and loss; strictly higher replaces it) and the
    last iterate that succeeded.

    Checkpoints (:func:`apgd_checkpoints`), exactly as the reference
    implementation decides them (the paper's Section 3.2 where it agrees):

    1. *Oscillation*: the number of steps since the last checkpoint whose loss
       is strictly higher than the previous step's is compared with ``<=``
       (reference; the paper writes ``<``) against ``rho * gap``. Every
       comparison is between the raw losses of consecutive iterates: after a
       reset to ``x_best`` the next step is compared with the loss of the
       iterate before the reset, not with the best loss. The first step of a
       run is compared with 0, the reference's zero-initialised loss history
       (the paper compares with ``f(x^(0))``); with a single-step budget the
       step is compared with itself.
    2. *No improvement*: the step was not halved at the previous checkpoint
       and the best loss has not risen since, ``best_at_last_check >= best``.
       At the first checkpoint this condition is off (the reference starts
       with "halved at the last check" set for every sample).

    Where either holds the step size is halved and the iterate and its
    gradient are reset to ``x_best`` (the previous iterate, for the next
    momentum term, stays the one before the reset). Every decision is a
    per-sample mask: the step loop never waits on the device.

    Per sample the result is the last successful iterate of the first run
    that succeeded (the start counts), else the highest-loss point over all
    runs (the reference's ``perturb`` returns the clean input there; its
    ``best_loss`` mode the highest-loss point, which we keep). Restarts
    (``restarts``) run only on the samples not yet fooled (one device sync
    per run to find them), each from a fresh random start. Unlike the
    reference, samples the model already misclassifies are attacked too.

    Random draws: per run, each sample taking part draws its start from its
    own generator (see :func:`apgd_random_start` for the exact calls); the
    step loop draws nothing.

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
        Weight of the new gradient step against the momentum term (0.75, the
        reference's fixed value).
    random_start : bool
        Start each run from a random point (default True); without it every
        restart repeats the first.
    eot_samples : int
        Gradients averaged per step, for randomised models (EOT). The loss
        that drives the checkpoints is averaged too (the reference uses the
        last pass's).
    seed : int
        Seed of the random starts.
    trace : callable, optional
        Keyword-only hook called with an :class:`APGDStep` at the start point
        and after every step of every run, for tests and diagnostics. It
        costs a device sync per step, so it is None by default.

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

    def __init__(self, *, eps: float, norm: str = "linf", steps: int = 100, restarts: int = 1,
                 loss: str | LossFn = "ce", rho: float = 0.75, alpha: float = 0.75, random_start: bool = True,
                 eot_samples: int = 1, seed: int = 0, trace: Optional[TraceFn] = None) -> None:
        super().__init__(norm=norm, eps=eps, seed=seed)
        self.steps = check_int("steps", steps)
        self.restarts = check_int("restarts", restarts)
        self.loss = get_loss(loss)
        self.rho = check_positive("rho", rho, upper=1.0)
        self.alpha = check_positive("alpha", alpha, upper=1.0)
        self.random_start = bool(random_start)
        self.eot_samples = check_int("eot_samples", eot_samples)
        if trace is not None and not callable(trace):
            raise ConfigError(f"trace must be a callable or None, got {trace!r}")
        self._trace: Optional[TraceFn] = trace

    # ------------------------------------------------------------ contract
    def _run(self, model: mx.gluon.Block, x: nd.NDArray, y: nd.NDArray, target: Optional[nd.NDArray],
             rngs: Sequence[np.random.Generator]) -> Tuple[nd.NDArray, np.ndarray]:
        return self._run_all(model, x, y, [target] * self.restarts, target is not None, rngs)

    def _queries(self, iterations: np.ndarray) -> np.ndarray:
        # Each run evaluates the gradient at its start and after each step.
        runs = iterations // self.steps
        return (iterations + runs) * self.eot_samples

    # ---------------------------------------------------------------- runs
    def _run_all(self, model: mx.gluon.Block, x: nd.NDArray, y: nd.NDArray, aims: Sequence[Optional[nd.NDArray]],
                 targeted: bool, rngs: Sequence[np.random.Generator]) -> Tuple[nd.NDArray, np.ndarray]:
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
            adv, loss, found = self._optimize(model, xs, ys, aim_s, targeted, [rngs[j] for j in todo], i, todo)
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
        run: int = 0,
        samples: Optional[np.ndarray] = None,
    ) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
        """One APGD run on :class:`~.engine.AdaptiveStep`; returns ``(x_adv, best_loss, found)``, on the device."""
        low, high = model.bounds
        rows = np.arange(x.shape[0]) if samples is None else np.asarray(samples)

        def project(point: nd.NDArray) -> nd.NDArray:
            return nd.clip(x + self.norm.project(point - x, self.eps), low, high)

        def evaluate(point: nd.NDArray) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
            grad, value, logits = input_gradient(model, point, y, aim, self.loss, self.eot_samples)
            pred = logits.argmax(axis=1)
            success = pred == aim if targeted else pred != y
            return grad, value, success

        def observe(step: int, *arrays: nd.NDArray) -> None:
            self._observe(run, step, rows, *arrays)

        start = x
        if self.random_start:
            noise = apgd_random_start(rngs, tuple(x.shape[1:]), self.eps, self.norm)
            start = nd.clip(x + nd.array(noise, ctx=x.context, dtype="float32"), low, high)
        rule = AdaptiveStep(eps=self.eps, steps=self.steps, rho=self.rho, alpha=self.alpha)
        return rule.run(evaluate, project, self.norm, start, observe if self._trace is not None else None)

    def _observe(
        self,
        run: int,
        step: int,
        rows: np.ndarray,
        x: nd.NDArray,
        loss: nd.NDArray,
        x_best: nd.NDArray,
        loss_best: nd.NDArray,
        eta: nd.NDArray,
        found: nd.NDArray,
    ) -> None:
        """Hand host copies to the ``trace`` hook; nothing (and no sync) without one."""
        if self._trace is None:
            return
        self._trace(APGDStep(
            run=run, step=step, samples=rows.copy(), x=x.asnumpy(), loss=loss.asnumpy().astype(np.float64),
            x_best=x_best.asnumpy(), loss_best=loss_best.asnumpy().astype(np.float64),
            eta=eta.asnumpy().astype(np.float64), found=found.asnumpy() > 0,
        ))

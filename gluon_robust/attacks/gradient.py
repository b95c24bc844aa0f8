"""The shared loop of iterative gradient attacks (FGSM, BIM/PGD, MI-FGSM).

The loop is :func:`.engine.ascend`: the norm object supplies the random
start, the steepest-ascent direction and the projection (see :mod:`.norms`).
Subclasses change the step through :meth:`IterativeGradientAttack._rule`
(momentum, for instance), never by branching on the norm.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import nd

from ..validation import check_int, check_positive
from .base import Attack, input_gradient
from .engine import FixedStep, ascend, best_of_restarts
from .losses import LossFn, get_loss

__all__ = ["IterativeGradientAttack"]


class IterativeGradientAttack(Attack):
    """Projected steepest ascent on a loss inside an epsilon-ball.

    Parameters
    ----------
    eps : float
        Radius of the threat model, in pixel units.
    norm : str
        ``"linf"``, ``"l2"`` or ``"l1"``.
    steps : int
        Gradient steps per restart (default 40, PGD's).
    step_size : float, optional
        Absolute step size; default ``2.5 * eps / steps`` (Madry et al. 2018).
    random_start : bool
        Start from a uniform point of the ball instead of the clean input.
    restarts : int
        Independent runs; per sample the first successful one is kept, else
        the one with the highest final loss.
    loss : str or callable
        ``"ce"``, ``"margin"`` (C&W) or ``"dlr"``, or ``f(logits, y, target)``.
    eot_samples : int
        Gradients averaged per step, for randomised models (EOT).
    l1_sparsity : float
        For ``norm="l1"``: fraction of coordinates moved per step.
    seed : int
        Seed of the random start.
    """

    norms = ("linf", "l2", "l1")

    def __init__(self, *, eps: float, norm: str = "linf", steps: int = 40, step_size: Optional[float] = None,
                 random_start: bool = True, restarts: int = 1, loss: str | LossFn = "ce", eot_samples: int = 1,
                 l1_sparsity: float = 0.01, seed: int = 0) -> None:
        super().__init__(norm=norm, eps=eps, seed=seed)
        if self.eps is None:
            raise ValueError("eps is required")
        self.steps = check_int("steps", steps)
        self.step_size = 2.5 * self.eps / self.steps if step_size is None else check_positive("step_size", step_size)
        self.random_start = bool(random_start)
        self.restarts = check_int("restarts", restarts)
        self.loss = get_loss(loss)
        self.eot_samples = check_int("eot_samples", eot_samples)
        self.norm = self.norm.with_sparsity(l1_sparsity)

    # ----------------------------------------------------------------- hooks
    def _rule(self) -> FixedStep:
        """The step rule of the ascent (subclasses: momentum, for instance)."""
        return FixedStep(self.step_size)

    def _begin(self, x: nd.NDArray) -> Dict[str, Any]:
        """Per-run state of the step rule."""
        return self._rule().begin(x)

    def _direction(self, grad: nd.NDArray, state: Dict[str, Any]) -> nd.NDArray:
        """The unit step direction of the step rule for a gradient."""
        return self._rule().direction(self.norm, grad, state)

    # ------------------------------------------------------------------ loop
    def _start(self, x: nd.NDArray, rngs: Sequence[np.random.Generator]) -> nd.NDArray:
        if not self.random_start:
            return nd.zeros_like(x)
        noise = self.norm.random_start(rngs, tuple(x.shape[1:]), self.eps)
        return nd.array(noise, ctx=x.context, dtype="float32")

    def _run(self, model: mx.gluon.Block, x: nd.NDArray, y: nd.NDArray, target: Optional[nd.NDArray],
             rngs: Sequence[np.random.Generator]) -> Tuple[nd.NDArray, int]:
        def gradient(point: nd.NDArray) -> Tuple[nd.NDArray, None]:
            grad, _, _ = input_gradient(model, point, y, target, self.loss, self.eot_samples)
            return grad, None

        def run(_: int) -> nd.NDArray:
            return ascend(gradient, x, self._start(x, rngs), norm=self.norm, eps=self.eps, steps=self.steps,
                          rule=self._rule(), bounds=model.bounds)

        best = best_of_restarts(x, self.restarts, run, lambda x_adv: self._score(model, x_adv, y, target))
        return best, self.steps * self.restarts

    def _score(self, model: mx.gluon.Block, x_adv: nd.NDArray, y: nd.NDArray, target: Optional[nd.NDArray]) -> nd.NDArray:
        """Loss at ``x_adv``, lifted to +inf where the attack already succeeds."""
        logits = model(x_adv)
        value = self.loss(logits, y, target)
        pred = logits.argmax(axis=1)
        done = pred != y if target is None else pred == target
        return nd.where(done, nd.full(value.shape, np.inf, ctx=value.context), value)

"""DeepFool: the smallest step that crosses the nearest linearised decision boundary.

Moosavi-Dezfooli, Fawzi & Frossard (2016), "DeepFool: a simple and accurate
method to fool deep neural networks", CVPR, https://arxiv.org/abs/1511.04599.

Distance: L2 or L-inf (minimal perturbation, no epsilon). Untargeted only.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, nd

from ..errors import ConfigError
from ..validation import check_int, check_positive
from .base import Attack, AttackKind, gradient_recording

__all__ = ["DeepFool"]

_TINY = 1e-12
# Added to |f_k| in every step so that a linearised step ends just past the
# boundary instead of exactly on it (as in the authors' reference code).
_CROSSING_SLACK = 1e-4


def _per_sample(values: nd.NDArray, like: nd.NDArray) -> nd.NDArray:
    """Reshape an (N,) array to broadcast against ``like`` (N, ...)."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


class DeepFool(Attack):
    """Multi-class DeepFool (Moosavi-Dezfooli et al. 2016).

    At every step the model is linearised around the current point. For each
    candidate class ``k`` with margin ``f_k = z_k - z_y`` and gradient
    ``w_k = grad f_k``, the linearised boundary lies at distance
    ``|f_k| / ||w_k||_*`` (``*`` is the dual norm: L2 for L2, L1 for L-inf).
    The step goes to the nearest of those boundaries: ``|f_l| / ||w_l||_2^2 * w_l``
    for L2 and ``|f_l| / ||w_l||_1 * sign(w_l)`` for L-inf. The steps add up to
    ``r`` and the iterates are ``clip(x + r)``; a sample stops moving as soon
    as its iterate is misclassified. As in the paper's Algorithm 2, the
    overshoot is applied once, to the final sum: the result is
    ``clip(x + (1 + overshoot) * r)``.

    On an affine classifier one step lands on the boundary, at exactly the
    minimal distance ``|f(x)| / ||w||_*`` (times ``1 + overshoot``).

    Where to overshoot matters in a bounded domain. If the model were
    linearised at the overshot point (as some implementations do), clipping
    makes the iterates creep up to the boundary, so the overshoot ends up
    built into the path and the result lies a hair past the boundary (logit
    margins of 1e-6 on MNIST, where float noise decides the label).
    Overshooting the final sum keeps a real margin.

    Parameters
    ----------
    norm : str
        ``"l2"`` (default) or ``"linf"``.
    steps : int
        Maximum linearisation steps (default 50).
    candidates : int
        Classes considered: the true class and the ``candidates - 1`` other
        classes with the highest clean logits (default 10; capped by the
        number of classes).
    overshoot : float
        Relative overshoot of the accumulated perturbation (default 0.02).
    seed : int
        Unused (DeepFool is deterministic); kept for a uniform interface.

    Notes
    -----
    Shapes: ``x`` is (N, C, H, W) in pixel space inside ``model.bounds``,
    ``y`` is (N,). Each step costs one forward pass and ``candidates - 1``
    backward passes (one input gradient per candidate class), batched over
    the samples; ``queries`` counts those input gradients, using the
    configured ``candidates`` (models with fewer classes use fewer). Every
    step runs for the whole batch (no per-step synchronisation); samples
    already misclassified are masked and do not move. ``iterations`` is the
    number of steps each sample actually moved.

    Examples
    --------
    >>> attack = DeepFool(norm="l2", steps=50, overshoot=0.02)
    >>> result = attack(model, x, y)
    >>> result.success.mean(), np.median(result.distance)
    >>> DeepFool(norm="linf", candidates=3)(model, x, y).distance
    """

    name = "deepfool"
    norms = ("l2", "linf")
    supports_targeted = False
    kind = AttackKind.MINIMUM_NORM

    def __init__(self, *, norm: str = "l2", steps: int = 50, candidates: int = 10, overshoot: float = 0.02,
                 seed: int = 0) -> None:
        super().__init__(norm=norm, eps=None, seed=seed)
        self.steps = check_int("steps", steps)
        self.candidates = check_int("candidates", candidates, minimum=2)
        self.overshoot = check_positive("overshoot", overshoot, allow_zero=True)

    def _queries(self, iterations: np.ndarray) -> np.ndarray:
        return iterations * (self.candidates - 1)

    def _run(self, model: mx.gluon.Block, x: nd.NDArray, y: nd.NDArray, target: Optional[nd.NDArray],
             rngs: Sequence[np.random.Generator]) -> Tuple[nd.NDArray, np.ndarray]:
        if target is not None:  # the base rejects it first; kept for direct callers
            raise ConfigError(f"{self.name} has no targeted mode")
        low, high = model.bounds
        others = self._candidate_classes(model, x, y)
        r_total = nd.zeros_like(x)
        moved = nd.zeros(y.shape, ctx=x.context)
        for _ in range(self.steps):
            step, logits = self._step(model, nd.clip(x + r_total, low, high), y, others)
            active = logits.argmax(axis=1) == y  # the iterate is still correctly classified
            r_total = r_total + step * _per_sample(active, x)
            moved = moved + active
        x_adv = nd.clip(x + (1.0 + self.overshoot) * r_total, low, high)
        return x_adv, moved.asnumpy().astype(np.int64)

    def _candidate_classes(self, model: mx.gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        """The ``candidates - 1`` classes other than ``y`` with the highest clean logits, (N, K) float."""
        with autograd.pause(train_mode=False):
            logits = model(x)
        num_classes = logits.shape[1]
        k = min(self.candidates, num_classes) - 1
        is_true = nd.one_hot(y, num_classes)
        masked = nd.where(is_true, nd.full(logits.shape, -np.inf, ctx=logits.context), logits)
        return nd.topk(masked, axis=1, k=k, ret_typ="indices").reshape((x.shape[0], k))

    def _step(
        self, model: mx.gluon.Block, x_adv: nd.NDArray, y: nd.NDArray, others: nd.NDArray
    ) -> Tuple[nd.NDArray, nd.NDArray]:
        """The step to the nearest linearised boundary among the candidates, and the logits at ``x_adv``.

        One forward pass is recorded; each candidate's margin is differentiated
        with respect to the input only, keeping the graph for the next one.
        """
        n, k = others.shape
        xv = x_adv.copy()
        xv.attach_grad()
        with gradient_recording(model):
            logits = model(xv)
            true_logit = nd.pick(logits, y, axis=1)
            margins = [nd.pick(logits, others[:, j], axis=1) - true_logit for j in range(k)]
        best_dist = nd.full((n,), np.inf, ctx=x_adv.context)
        best_step = nd.zeros_like(x_adv)
        for j, margin in enumerate(margins):
            (w,) = autograd.grad(margin, [xv], retain_graph=j < k - 1)
            direction = self.norm.direction(w)  # unit steepest direction; <w, direction> is the dual norm
            dual = nd.sum((w * direction).reshape((n, -1)), axis=1) + _TINY
            gap = nd.abs(margin.detach())
            dist = gap / dual
            step = _per_sample((gap + _CROSSING_SLACK) / dual, w) * direction
            closer = dist < best_dist
            best_dist = nd.where(closer, dist, best_dist)
            best_step = nd.where(_per_sample(closer, w).broadcast_like(w), step, best_step)
        return best_step, logits.detach()

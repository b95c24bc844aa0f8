"""MART: misclassification-aware adversarial training.

Wang, Zou, Yi, Bailey, Ma & Gu (2020), "Improving Adversarial Robustness
Requires Revisiting Misclassified Examples", ICLR,
https://openreview.net/forum?id=rklOg6EFwS. Per sample::

    BCE(p(x'), y) + beta * KL(p(x) || p(x')) * (1 - p_y(x))

with the boosted cross-entropy ``BCE(p, y) = -log p_y - log(1 - max_{k != y} p_k)``
on the PGD adversarial example ``x'`` (cross-entropy ascent from
``x + 0.001 * N(0, 1)``), and the KL term weighted up on the samples the
model misclassifies or is unsure about.
"""

from __future__ import annotations

from typing import Optional

from mxnet import gluon, nd

from ..validation import check_positive
from .adversarial import AdversarialMethod, bounds_of, cross_entropy, kl_divergence

__all__ = ["MART"]

_EPS = 1e-4  # keeps log(1 - max other probability) finite, as in the paper's code


class MART(AdversarialMethod):
    """MART (Wang et al. 2020).

    Parameters
    ----------
    eps : float
        Radius in pixel units.
    norm : str
        ``"linf"`` (default) or ``"l2"``.
    steps : int
        PGD steps (default 10).
    step_size : float, optional
        Absolute step; default ``2.5 * eps / steps``.
    beta : float
        Weight of the misclassification-aware KL term (default 6, the paper's choice).
    attack_bn, attack_updates_stats, seed
        See :class:`~gluon_robust.training.adversarial.AdversarialMethod`.
    """

    name = "mart"

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        steps: int = 10,
        step_size: Optional[float] = None,
        beta: float = 6.0,
        attack_bn: str = "train",
        attack_updates_stats: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps, step_size=step_size, attack_bn=attack_bn,
                         attack_updates_stats=attack_updates_stats, seed=seed)
        self.beta = check_positive("beta", beta, allow_zero=True)

    def perturb(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        """The PGD adversarial batch (detached)."""
        if self.eps == 0:
            return x.detach()
        start = self._gaussian_start(x, 0.001)
        with self._attack_scope(model, x) as target:
            return self._ascend(target, x, lambda logits: cross_entropy(logits, y), start,
                                steps=self.steps, step_size=self.step_size, bounds=bounds_of(model))

    def _loss(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        adv = model(self.perturb(model, x, y))
        clean = model(x)
        adv_prob = nd.softmax(adv, axis=1)
        others = nd.where(nd.one_hot(y, adv.shape[1]) > 0, nd.zeros_like(adv_prob), adv_prob)
        boosted = cross_entropy(adv, y) - nd.log(1.0 + _EPS - nd.max(others, axis=1))
        true_prob = nd.pick(nd.softmax(clean, axis=1), y, axis=1)
        return boosted + self.beta * kl_divergence(clean, adv) * (1.0 - true_prob)

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

from mxnet import gluon, nd

from .adversarial import Objective, cross_entropy, kl_divergence
from .regularised import RegularisedMethod

__all__ = ["MART"]

_EPS = 1e-4  # keeps log(1 - max other probability) finite, as in the paper's code


class MART(RegularisedMethod):
    """MART (Wang et al. 2020).

    Parameters
    ----------
    beta : float
        Weight of the misclassification-aware KL term (default 6, the paper's choice).
    eps, norm, steps, step_size, attack_bn, attack_updates_stats, seed
        See :class:`~gluon_robust.training.regularised.RegularisedMethod` (``steps`` defaults to 10).
    """

    name = "mart"

    def _objective(self, target: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> Objective:
        """The cross-entropy (PGD)."""
        return lambda logits: cross_entropy(logits, y)

    def _loss(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        adv = model(self.perturb(model, x, y))
        clean = model(x)
        adv_prob = nd.softmax(adv, axis=1)
        others = nd.where(nd.one_hot(y, adv.shape[1]) > 0, nd.zeros_like(adv_prob), adv_prob)
        boosted = cross_entropy(adv, y) - nd.log(1.0 + _EPS - nd.max(others, axis=1))
        true_prob = nd.pick(nd.softmax(clean, axis=1), y, axis=1)
        return boosted + self.beta * kl_divergence(clean, adv) * (1.0 - true_prob)

"""TRADES: a clean loss plus a KL term between clean and adversarial predictions.

Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan (2019), "Theoretically Principled
Trade-off between Robustness and Accuracy", ICML, https://arxiv.org/abs/1901.08573.
Per sample::

    CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x'))

where ``x'`` maximises the KL term inside the eps-ball, starting from
``x + 0.001 * N(0, 1)``, with the clean prediction held fixed during the
attack. Gradients flow through both ``f(x)`` and ``f(x')`` in the outer loss.
"""

from __future__ import annotations

from mxnet import gluon, nd

from .adversarial import Objective, cross_entropy, kl_divergence
from .regularised import RegularisedMethod

__all__ = ["TRADES"]


class TRADES(RegularisedMethod):
    """TRADES (Zhang et al. 2019).

    Parameters
    ----------
    beta : float
        Weight of the KL term (default 6, the paper's choice; 1/lambda there).
    eps, norm, steps, step_size, attack_bn, attack_updates_stats, seed
        See :class:`~gluon_robust.training.regularised.RegularisedMethod` (``steps`` defaults to 10).

    Examples
    --------
    >>> method = TRADES(eps=0.3, steps=10, beta=6.0)
    """

    name = "trades"

    def _objective(self, target: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> Objective:
        """The KL term against the clean prediction, held fixed during the attack."""
        clean = target(x).detach()
        return lambda logits: kl_divergence(clean, logits)

    def _loss(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        x_adv = self.perturb(model, x, y)
        clean = model(x)
        if self.beta == 0:
            return cross_entropy(clean, y)
        return cross_entropy(clean, y) + self.beta * kl_divergence(clean, model(x_adv))

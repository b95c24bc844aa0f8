"""PGD adversarial training, with a clean/adversarial mixing ratio.

Madry, Makelov, Schmidt, Tsipras & Vladu (2018), "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR, https://arxiv.org/abs/1706.06083:
minimise the cross-entropy on the worst case PGD finds in the eps-ball.
The mixing ratio follows Goodfellow, Shlens & Szegedy (2015), "Explaining and
Harnessing Adversarial Examples", https://arxiv.org/abs/1412.6572, who
trained on ``alpha * J(x) + (1 - alpha) * J(x_adv)``.
"""

from __future__ import annotations

from typing import Optional

from mxnet import gluon, nd

from ..validation import check_positive
from .adversarial import AdversarialMethod, cross_entropy

__all__ = ["PGDAT"]


class PGDAT(AdversarialMethod):
    """PGD-AT (Madry et al. 2018): train on PGD adversarial examples.

    Per sample the loss is ``mix * CE(f(x), y) + (1 - mix) * CE(f(x_adv), y)``,
    where ``x_adv`` maximises the cross-entropy by ``steps`` projected
    steepest-ascent steps from a random start in the eps-ball.

    Parameters
    ----------
    eps : float
        Radius in pixel units (e.g. 0.3 for MNIST, 8/255 for CIFAR-10).
    norm : str
        ``"linf"`` (default) or ``"l2"``.
    steps : int
        PGD steps (default 10).
    step_size : float, optional
        Absolute step; default ``2.5 * eps / steps``.
    random_start : bool
        Start from a uniform point of the ball (default True).
    mix : float
        Weight of the clean loss in ``[0, 1]``; 0 (default) is pure PGD-AT.
        With ``mix > 0`` clean and adversarial batches go through the network
        separately, so each BatchNorm sees one kind of batch at a time.
    attack_bn, attack_updates_stats, seed
        See :class:`~gluon_robust.training.adversarial.AdversarialMethod`.

    Examples
    --------
    >>> method = PGDAT(eps=0.3, steps=10, mix=0.5)
    >>> with autograd.record():
    ...     loss = method(model, x, y)
    >>> loss.backward()
    >>> trainer.step(x.shape[0])
    """

    name = "pgd-at"

    def __init__(self, *, eps: float, norm: str = "linf", steps: int = 10, step_size: Optional[float] = None,
                 random_start: bool = True, mix: float = 0.0, attack_bn: str = "train",
                 attack_updates_stats: bool = False, seed: int = 0) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps, step_size=step_size, attack_bn=attack_bn,
                         attack_updates_stats=attack_updates_stats, seed=seed)
        self.random_start = bool(random_start)
        self.mix = check_positive("mix", mix, allow_zero=True, upper=1.0)

    def perturb(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        """The adversarial batch the method trains on (detached)."""
        if self.eps == 0 or self.mix == 1.0:
            return x.detach()
        return self._ce_ascent(model, x, y, random_start=self.random_start, steps=self.steps)

    def _loss(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        if self.mix == 1.0:
            return cross_entropy(model(x), y)
        adversarial = cross_entropy(model(self.perturb(model, x, y)), y)
        if self.mix == 0.0:
            return adversarial
        return self.mix * cross_entropy(model(x), y) + (1.0 - self.mix) * adversarial

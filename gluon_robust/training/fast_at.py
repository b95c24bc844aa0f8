"""Fast adversarial training: FGSM from a random start.

Wong, Rice & Kolter (2020), "Fast is better than free: Revisiting adversarial
training", ICLR, https://arxiv.org/abs/2001.03994. One FGSM step of size
``1.25 * eps`` from a uniform random point of the eps-ball costs about as much
as two clean steps and matches PGD-AT when combined with early stopping
against *catastrophic overfitting* (the PGD accuracy suddenly collapsing
while FGSM accuracy soars); see :class:`~gluon_robust.training.guard.OverfittingGuard`.
"""

from __future__ import annotations

from typing import Optional

from mxnet import gluon, nd

from .adversarial import AdversarialMethod, cross_entropy

__all__ = ["FastAT"]


class FastAT(AdversarialMethod):
    """Fast-AT (Wong et al. 2020): train on one FGSM step from a random start.

    ``delta ~ U(ball(eps))``, ``delta <- Proj(delta + alpha * sign(grad))``,
    loss ``CE(f(x + delta), y)``.

    Parameters
    ----------
    eps, norm
        The threat model, as in :class:`~gluon_robust.training.adversarial.AdversarialMethod`.
    step_size : float, optional
        The FGSM step ``alpha``; default ``1.25 * eps``. Steps of ``2 * eps``
        or more, or no random start, bring catastrophic overfitting.
    random_start : bool
        Start from a uniform point of the ball (default True); without it
        this is plain FGSM training (Goodfellow et al. 2015).
    attack_bn, attack_updates_stats, seed
        See :class:`~gluon_robust.training.adversarial.AdversarialMethod`.

    Examples
    --------
    >>> method = FastAT(eps=0.3)
    >>> guard = OverfittingGuard(max_drop=0.2)   # PGD check once per epoch
    """

    name = "fast-at"
    default_step_factor = 1.25

    def __init__(self, *, eps: float, norm: str = "linf", step_size: Optional[float] = None,
                 random_start: bool = True, attack_bn: str = "train", attack_updates_stats: bool = False,
                 seed: int = 0) -> None:
        super().__init__(eps=eps, norm=norm, steps=1, step_size=step_size, attack_bn=attack_bn,
                         attack_updates_stats=attack_updates_stats, seed=seed)
        self.random_start = bool(random_start)

    def set_budget(self, *, eps: Optional[float] = None, steps: Optional[int] = None) -> None:
        """Change ``eps``; Fast-AT always takes one step, so ``steps`` is ignored."""
        super().set_budget(eps=eps)

    def perturb(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        """The adversarial batch the method trains on (detached)."""
        if self.eps == 0:
            return x.detach()
        return self._ce_ascent(model, x, y, random_start=self.random_start, steps=1)

    def _loss(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        return cross_entropy(model(self.perturb(model, x, y)), y)

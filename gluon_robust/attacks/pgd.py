"""Projected Gradient Descent and the Basic Iterative Method.

PGD: Madry, Makelov, Schmidt, Tsipras & Vladu (2018), "Towards Deep Learning
Models Resistant to Adversarial Attacks", ICLR, https://arxiv.org/abs/1706.06083.
BIM: Kurakin, Goodfellow & Bengio (2017), "Adversarial examples in the physical
world", https://arxiv.org/abs/1607.02533 (PGD without the random start).

Distance: L-inf, L2 or L1 (sparse steps). Targeted and untargeted.
"""

from __future__ import annotations

from typing import Optional

from .gradient import IterativeGradientAttack
from .losses import LossFn

__all__ = ["PGD", "BIM"]


class PGD(IterativeGradientAttack):
    """PGD with random start and restarts (Madry et al. 2018).

    Parameters
    ----------
    eps : float
        Radius of the threat model in pixel units.
    norm : str
        ``"linf"`` (default), ``"l2"`` or ``"l1"``.
    steps : int
        Steps per restart (default 40).
    step_size : float, optional
        Default ``2.5 * eps / steps``.
    random_start : bool
        Uniform start inside the ball (default True).
    restarts : int
        Random restarts, best kept per sample.
    loss : str or callable
        ``"ce"`` (default), ``"margin"`` or ``"dlr"``.
    eot_samples : int
        Gradients averaged per step (EOT).
    seed : int
        Seed of the random starts.

    Examples
    --------
    >>> attack = PGD(eps=8 / 255, steps=20)
    >>> result = attack(model, x, y)                     # untargeted
    >>> result = attack(model, x, y, target=t)           # targeted
    >>> result.x_adv.shape == x.shape, result.success.mean()
    """

    name = "pgd"
    # The constructor is IterativeGradientAttack's (steps default 40).


class BIM(PGD):
    """The Basic Iterative Method (Kurakin et al. 2017): PGD from the clean input.

    Same parameters as :class:`PGD`; the default step size is ``eps / steps``
    and there is no random start or restart.
    """

    name = "bim"

    def __init__(self, *, eps: float, norm: str = "linf", steps: int = 10, step_size: Optional[float] = None,
                 loss: str | LossFn = "ce", eot_samples: int = 1, l1_sparsity: float = 0.01, seed: int = 0) -> None:
        super().__init__(
            eps=eps, norm=norm, steps=steps, step_size=step_size if step_size is not None else eps / steps,
            random_start=False, restarts=1, loss=loss, eot_samples=eot_samples, l1_sparsity=l1_sparsity, seed=seed,
        )

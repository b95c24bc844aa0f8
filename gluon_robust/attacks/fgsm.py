"""Fast Gradient Sign Method, and its L2/L1 form, the Fast Gradient Method.

Goodfellow, Shlens & Szegedy (2015), "Explaining and Harnessing Adversarial
Examples", ICLR, https://arxiv.org/abs/1412.6572.

One step of size ``eps`` along the steepest-ascent direction of the loss:
``x + eps * sign(grad)`` for L-inf. Targeted mode steps towards the target.
"""

from __future__ import annotations

from .gradient import IterativeGradientAttack
from .losses import LossFn

__all__ = ["FGSM"]


class FGSM(IterativeGradientAttack):
    """Single-step attack (Goodfellow et al. 2015).

    Parameters
    ----------
    eps : float
        Step size and radius, in pixel units.
    norm : str
        ``"linf"`` (FGSM), ``"l2"`` or ``"l1"`` (FGM).
    loss : str or callable
        ``"ce"`` (default), ``"margin"`` or ``"dlr"``.
    eot_samples : int
        Gradients averaged (EOT) for randomised models.
    seed : int
        Unused (FGSM is deterministic); kept for a uniform interface.

    Examples
    --------
    >>> result = FGSM(eps=0.1)(model, x, y)
    """

    name = "fgsm"

    def __init__(self, *, eps: float, norm: str = "linf", loss: str | LossFn = "ce", eot_samples: int = 1,
                 l1_sparsity: float = 0.01, seed: int = 0) -> None:
        super().__init__(
            eps=eps, norm=norm, steps=1, random_start=False, restarts=1,
            loss=loss, eot_samples=eot_samples, l1_sparsity=l1_sparsity, seed=seed,
        )
        self.step_size = self.eps

"""Momentum Iterative FGSM.

Dong, Liao, Pang, Su, Zhu, Hu & Li (2018), "Boosting Adversarial Attacks with
Momentum", CVPR, https://arxiv.org/abs/1710.06081.

BIM whose step follows an accumulated gradient ``g``: each new gradient is
scaled to unit mean absolute value per sample and added to ``decay * g``, so
that steps keep their direction across iterations (which also makes the
examples transfer better to other models). Distance: L-inf (the paper's
form), L2 or L1 (sparse steps). Targeted and untargeted.
"""

from __future__ import annotations

from ..validation import check_int, check_positive
from .engine import MomentumStep
from .gradient import IterativeGradientAttack
from .losses import LossFn

__all__ = ["MIFGSM"]


class MIFGSM(IterativeGradientAttack):
    """MI-FGSM (Dong et al. 2018): BIM with a momentum of normalised gradients.

    At each step ::

        g <- decay * g + grad / mean(|grad|)
        x <- P(x + step_size * d(g))

    with ``d`` the norm's steepest-ascent direction (the sign for L-inf) and
    ``P`` the projection onto the eps-ball and the bounds. With ``decay=0``
    it is BIM.

    Parameters
    ----------
    eps : float
        Radius of the threat model, in pixel units.
    norm : str
        ``"linf"`` (default), ``"l2"`` or ``"l1"``.
    steps : int
        Iterations (default 10).
    decay : float
        Momentum decay factor ``mu`` (default 1.0, as in the paper).
    step_size : float, optional
        Default ``eps / steps``, so that the steps can just reach the border.
    loss : str or callable
        ``"ce"`` (default), ``"margin"`` or ``"dlr"``, or ``f(logits, y, target)``.
    eot_samples : int
        Gradients averaged per step, for randomised models (EOT).
    l1_sparsity : float
        For ``norm="l1"``: fraction of coordinates moved per step.
    seed : int
        Unused (no random start); kept for a uniform interface.

    Notes
    -----
    Shapes: ``x`` is (N, C, H, W) inside ``model.bounds``; ``y`` and
    ``target`` are (N,). Every sample takes ``steps`` gradient steps.

    Examples
    --------
    >>> attack = MIFGSM(eps=16 / 255, steps=10, decay=1.0)
    >>> result = attack(model, x, y)                     # untargeted
    >>> result = attack(model, x, y, target=t)           # targeted
    >>> result.success.mean()
    """

    name = "mifgsm"

    def __init__(self, *, eps: float, norm: str = "linf", steps: int = 10, decay: float = 1.0,
                 step_size: float | None = None, loss: str | LossFn = "ce", eot_samples: int = 1,
                 l1_sparsity: float = 0.01, seed: int = 0) -> None:
        steps = check_int("steps", steps)
        super().__init__(
            eps=eps, norm=norm, steps=steps,
            step_size=step_size if step_size is not None else check_positive("eps", eps) / steps,
            random_start=False, restarts=1, loss=loss, eot_samples=eot_samples, l1_sparsity=l1_sparsity, seed=seed,
        )
        self.decay = check_positive("decay", decay, allow_zero=True)

    def _rule(self) -> MomentumStep:
        return MomentumStep(self.step_size, self.decay)

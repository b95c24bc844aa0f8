"""The Carlini & Wagner L-infinity attack, in its projected-gradient form.

Objective: the clamped C&W logit margin of Carlini & Wagner (2017),
"Towards Evaluating the Robustness of Neural Networks", IEEE Symposium on
Security and Privacy, https://arxiv.org/abs/1608.04644. Optimiser: projected
gradient ascent inside a fixed L-infinity ball, as in Madry, Makelov, Schmidt,
Tsipras & Vladu (2018), "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR, https://arxiv.org/abs/1706.06083.

This is the "CW-Linf" of most robustness benchmarks (PGD on the C&W loss),
not the paper's original L-infinity algorithm, which shrinks a threshold
``tau`` over repeated C&W optimisations to find a minimal L-infinity
perturbation. A fixed-budget attack answers the question a benchmark asks
("is there an adversarial example within eps?") directly and in a fixed
number of steps.
"""

from __future__ import annotations

from typing import Optional

from ..validation import check_positive
from .cw import ClampedMargin
from .gradient import IterativeGradientAttack

__all__ = ["CarliniWagnerLinf"]


class CarliniWagnerLinf(IterativeGradientAttack):
    """PGD on the Carlini & Wagner margin inside an L-infinity ball.

    Ascends ``min(margin(x'), kappa)``, where ``margin`` is the best other
    logit minus the true logit (untargeted) or the target logit minus the
    best other one (targeted): the margin is positive exactly when the attack
    succeeds, and clamping it at the confidence ``kappa`` stops the push once
    the adversarial class leads by ``kappa`` (with ``kappa = 0`` a point stays
    put as soon as it is adversarial). Unlike cross-entropy, the margin does
    not saturate on over-confident models.

    Distance: L-infinity, at most ``eps``. Targeted and untargeted.

    Parameters
    ----------
    eps : float
        Radius of the L-infinity ball, in pixel units (``8 / 255`` for
        CIFAR-10 in [0, 1]).
    steps : int
        Signed-gradient steps per restart (default 100).
    step_size : float, optional
        Absolute step size; default ``2.5 * eps / steps``.
    random_start : bool
        Start from a uniform point of the ball (default True).
    restarts : int
        Independent runs; per sample the first successful one is kept.
    confidence : float
        ``kappa >= 0`` (default 0): the margin at which the push stops.
    eot_samples : int
        Gradients averaged per step (Expectation over Transformation).
    seed : int
        Seed of the random starts.

    Notes
    -----
    Shapes: ``x`` (N, C, H, W) in ``model.bounds``, ``y`` and ``target``
    (N,). One forward-backward pass per step and sample (times
    ``eot_samples``).

    Examples
    --------
    >>> attack = CarliniWagnerLinf(eps=8 / 255, steps=100)
    >>> result = attack(model, x, y)
    >>> result.success.mean(), result.distance.max() <= 8 / 255
    >>> result = attack(model, x, y, target=t)            # targeted
    """

    name = "cw-linf"
    norms = ("linf",)

    def __init__(self, *, eps: float, steps: int = 100, step_size: Optional[float] = None, random_start: bool = True,
                 restarts: int = 1, confidence: float = 0.0, eot_samples: int = 1, seed: int = 0) -> None:
        eps = check_positive("eps", eps, allow_zero=True)
        confidence = check_positive("confidence", confidence, allow_zero=True)
        super().__init__(
            eps=eps, norm="linf", steps=steps, step_size=step_size, random_start=random_start, restarts=restarts,
            loss=ClampedMargin(confidence), eot_samples=eot_samples, seed=seed,
        )
        self.confidence = confidence

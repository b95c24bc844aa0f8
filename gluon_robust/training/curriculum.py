"""Curriculum: warm the attack budget (epsilon and steps) up over the first epochs.

Training against the full budget from the start can stall (on MNIST at
eps = 0.3 a fresh network may never leave chance level). Ramping epsilon up
is standard practice: linearly, as in Gowal et al. (2018), "On the
Effectiveness of Interval Bound Propagation for Training Verifiably Robust
Models", https://arxiv.org/abs/1810.12715, and Wong et al. (2020); or in
stages, as in Cai, Liu & Song (2018), "Curriculum Adversarial Training",
IJCAI, https://arxiv.org/abs/1805.04807, who also grow the number of attack
steps.
"""

from __future__ import annotations

import math
from typing import Tuple

from ..errors import ConfigError
from ..validation import check_choice, check_int, check_positive

__all__ = ["Curriculum", "CURRICULUM_KINDS"]

#: Values of ``kind``.
CURRICULUM_KINDS = ("linear", "step")


class Curriculum:
    """A schedule of ``(eps, steps)`` over (fractional) epochs.

    Both values move from their start to their target as the fraction
    ``f(e)`` of the warm-up done at epoch ``e`` goes from 0 to 1, and stay at
    the target from epoch ``warmup_epochs`` on:

    * ``"linear"``: ``f(e) = min(1, e / warmup_epochs)``, with ``e`` fractional
      (``epoch + step / steps_per_epoch``), so the budget grows every step;
    * ``"step"``: ``f(e) = min(1, (floor(e) + 1) / (warmup_epochs + 1))``, a
      constant budget within each epoch and ``warmup_epochs + 1`` stages.

    ``eps = start_eps + f * (eps - start_eps)`` and
    ``steps = round(start_steps + f * (steps - start_steps))``.

    Parameters
    ----------
    eps : float
        Target radius.
    steps : int
        Target number of attack steps.
    warmup_epochs : float
        Epochs until the target is reached (0: no warm-up).
    kind : str
        ``"linear"`` (default) or ``"step"``.
    start_eps : float
        Radius at epoch 0 (default 0).
    start_steps : int
        Attack steps at epoch 0 (default 1).

    Examples
    --------
    >>> schedule = Curriculum(eps=0.3, steps=10, warmup_epochs=4)
    >>> schedule.at(1.0)
    (0.075, 3)
    >>> method.set_budget(**dict(zip(("eps", "steps"), schedule.at(epoch + i / n))))
    """

    def __init__(self, *, eps: float, steps: int, warmup_epochs: float, kind: str = "linear", start_eps: float = 0.0,
                 start_steps: int = 1) -> None:
        self.eps = check_positive("eps", eps, allow_zero=True)
        self.steps = check_int("steps", steps)
        self.warmup_epochs = check_positive("warmup_epochs", warmup_epochs, allow_zero=True)
        self.kind = check_choice("kind", kind, CURRICULUM_KINDS)
        self.start_eps = check_positive("start_eps", start_eps, allow_zero=True, upper=self.eps)
        self.start_steps = check_int("start_steps", start_steps)
        if self.start_steps > self.steps:
            raise ConfigError(f"start_steps must be <= steps ({self.steps}), got {start_steps!r}")

    def __repr__(self) -> str:
        return (f"Curriculum(kind={self.kind!r}, eps={self.eps}, steps={self.steps}, "
                f"warmup_epochs={self.warmup_epochs}, start_eps={self.start_eps}, start_steps={self.start_steps})")

    def fraction(self, epoch: float) -> float:
        """The part of the warm-up done at (fractional) ``epoch``, in ``[0, 1]``."""
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch!r}")
        if self.warmup_epochs == 0:
            return 1.0
        if self.kind == "linear":
            return min(1.0, epoch / self.warmup_epochs)
        return min(1.0, (math.floor(epoch) + 1) / (math.floor(self.warmup_epochs) + 1))

    def at(self, epoch: float) -> Tuple[float, int]:
        """``(eps, steps)`` at (fractional) ``epoch``."""
        f = self.fraction(epoch)
        eps = self.start_eps + f * (self.eps - self.start_eps)
        steps = int(round(self.start_steps + f * (self.steps - self.start_steps)))
        return eps, max(1, steps)

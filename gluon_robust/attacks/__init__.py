"""Adversarial attacks: one algorithm per module, one contract for all.

Every attack is built from keyword-only hyperparameters and called as
``attack(model, x, y)`` or ``attack(model, x, y, target=t)``; see
:class:`~gluon_robust.attacks.base.Attack` for the guarantees. Look attacks up
by name with :func:`get_attack`.
"""

from __future__ import annotations

from typing import Any, List

from ..registry import Registry
from .base import Attack, AttackResult, input_gradient
from .fgsm import FGSM
from .losses import get_loss
from .norms import get_norm
from .pgd import BIM, PGD

__all__ = ["Attack", "AttackResult", "ATTACKS", "get_attack", "attack_names", "input_gradient", "get_loss", "get_norm",
           "FGSM", "PGD", "BIM"]

ATTACKS: Registry[Attack] = Registry("attack")
ATTACKS.register("fgsm", "fgm")(FGSM)
ATTACKS.register("pgd", "pgd-linf")(PGD)
ATTACKS.register("bim", "i-fgsm")(BIM)


def get_attack(name: str, **kwargs: Any) -> Attack:
    """Build a registered attack, e.g. ``get_attack("pgd", eps=8/255, steps=20)``.

    Raises
    ------
    ConfigError
        For an unknown name (the message lists the valid names) or a bad hyperparameter.
    """
    return ATTACKS.get(name, **kwargs)


def attack_names() -> List[str]:
    """Names of every registered attack."""
    return ATTACKS.names()

"""Adversarial attacks: one algorithm per module, one contract for all.

Every attack is built from keyword-only hyperparameters and called as
``attack(model, x, y)`` or ``attack(model, x, y, target=t)``; see
:class:`~gluon_robust.attacks.base.Attack` for the guarantees. Look attacks up
by name with :func:`get_attack`.
"""

from __future__ import annotations

from typing import Any, Dict, List


from ..registry import Registry
from .apgd import APGD
from .bandits import Bandits
from .boundary import BoundaryAttack
from .apgdt import APGDT
from .base import Attack, AttackResult, input_gradient
from .cw import CarliniWagnerL2
from .cw_linf import CarliniWagnerLinf
from .deepfool import DeepFool
from .ead import EAD
from .fab import FAB, FABT
from .fgsm import FGSM
from .hopskipjump import HopSkipJump
from .jsma import JSMA
from .losses import get_loss
from .mifgsm import MIFGSM
from .nes import NES
from .norms import get_norm
from .pgd import BIM, PGD
from .simba import SimBA, SimBADCT
from .square import SquareAttack
from .transfer import TransferAttack
from .zoo_attack import ZOO

__all__ = ["Attack", "AttackResult", "ATTACKS", "get_attack", "make_attack", "attack_names", "input_gradient", "get_loss", "get_norm",
           "FGSM", "PGD", "BIM", "MIFGSM", "APGD", "APGDT", "DeepFool", "JSMA",
           "CarliniWagnerL2", "CarliniWagnerLinf", "EAD", "FAB", "FABT",
           "SquareAttack", "SimBA", "SimBADCT", "NES", "Bandits", "ZOO", "HopSkipJump", "BoundaryAttack",
           "TransferAttack"]

ATTACKS: Registry[Attack] = Registry("attack")
ATTACKS.register("fgsm", "fgm")(FGSM)
ATTACKS.register("pgd", "pgd-linf")(PGD)
ATTACKS.register("bim", "i-fgsm")(BIM)
ATTACKS.register("mifgsm", "mi-fgsm")(MIFGSM)
ATTACKS.register("apgd", "apgd-ce")(APGD)
ATTACKS.register("apgd-t", "apgdt")(APGDT)
ATTACKS.register("deepfool")(DeepFool)
ATTACKS.register("jsma")(JSMA)
ATTACKS.register("cw", "cw-l2")(CarliniWagnerL2)
ATTACKS.register("cw-linf")(CarliniWagnerLinf)
ATTACKS.register("ead")(EAD)
ATTACKS.register("fab")(FAB)
ATTACKS.register("fab-t", "fabt")(FABT)
# Black-box: forward passes only, queries counted per sample.
ATTACKS.register("square", "square-attack")(SquareAttack)
ATTACKS.register("simba")(SimBA)
ATTACKS.register("simba-dct")(SimBADCT)
ATTACKS.register("nes")(NES)
ATTACKS.register("bandits", "bandits-td")(Bandits)
ATTACKS.register("zoo")(ZOO)
ATTACKS.register("hopskipjump", "hsja")(HopSkipJump)
ATTACKS.register("boundary", "boundary-attack")(BoundaryAttack)
ATTACKS.register("transfer", "mi-di-fgsm")(TransferAttack)


def get_attack(name: str, **kwargs: Any) -> Attack:
    """Build a registered attack, e.g. ``get_attack("pgd", eps=8/255, steps=20)``.

    Raises
    ------
    ConfigError
        For an unknown name (the message lists the valid names) or a bad hyperparameter.
    """
    return ATTACKS.get(name, **kwargs)


def make_attack(name: str, options: Dict[str, Any]) -> Attack:
    """Build a registered attack from options, rejecting those it does not take.

    Unlike :func:`get_attack`, an option the attack has no parameter for is a
    :class:`ConfigError` that lists the parameters it does accept (for flags
    such as ``--steps`` given to ``fgsm``).
    """
    return ATTACKS.make(name, options)


def attack_names() -> List[str]:
    """Names of every registered attack."""
    return ATTACKS.names()

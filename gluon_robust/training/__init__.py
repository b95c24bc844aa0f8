"""Training: plain supervised fitting, and adversarial training helpers that plug into any Gluon loop.

Every training method is a helper called inside the user's own
``autograd.record()`` on a clean batch (or shard) that returns the per-sample
loss to backpropagate; the user keeps ``backward`` and ``trainer.step``. See
:mod:`.adversarial` for the contract, :mod:`.batchnorm` for the BatchNorm
options, and :mod:`.loop` for the complete loop behind ``gluon-robust train``
and ``scripts/train_adversarial.py``. Methods are looked up by name with
:func:`get_method`.
"""

from __future__ import annotations

from typing import Any, Dict, List

from ..registry import Registry
from .adversarial import AdversarialMethod, TrainingMethod
from .batchnorm import EvalMirror, folded_copy, preserve_running_stats, recalibrate_batchnorm, running_stats
from .curriculum import Curriculum
from .distillation import Distillation
from .fast_at import FastAT
from .free_at import FreeAT
from .gaussian_augmentation import GaussianAugmentation
from .guard import OverfittingGuard
from .input_gradient_reg import InputGradientRegularization
from .mart import MART
from .pgd_at import PGDAT
from .standard import Standard, TrainResult, fit_classifier, save_trained, train_zoo_model
from .trades import TRADES

__all__ = [
    "TRAINING_METHODS", "get_method", "make_method", "method_names",
    "TrainingMethod", "AdversarialMethod", "PGDAT", "FastAT", "FreeAT", "TRADES", "MART",
    "InputGradientRegularization", "Distillation", "Standard", "Curriculum", "OverfittingGuard",
    "EvalMirror", "folded_copy", "preserve_running_stats", "recalibrate_batchnorm", "running_stats",
    "TrainResult", "fit_classifier", "save_trained", "train_zoo_model",
]

TRAINING_METHODS: Registry[TrainingMethod] = Registry("training method")
TRAINING_METHODS.register("pgd-at", "pgd", "madry")(PGDAT)
TRAINING_METHODS.register("fast-at", "fast", "fgsm-rs")(FastAT)
TRAINING_METHODS.register("free-at", "free")(FreeAT)
TRAINING_METHODS.register("trades")(TRADES)
TRAINING_METHODS.register("mart")(MART)
TRAINING_METHODS.register("input-grad", "igr", "input-gradient")(InputGradientRegularization)
TRAINING_METHODS.register("distill", "distillation")(Distillation)
TRAINING_METHODS.register("standard", "natural", "clean")(Standard)
TRAINING_METHODS.register("gaussian", "noise")(GaussianAugmentation)


def get_method(name: str, **kwargs: Any) -> TrainingMethod:
    """Build a registered training method, e.g. ``get_method("trades", eps=0.3, beta=6)``.

    A :class:`ConfigError` for an unknown name (listing the valid ones) or a bad hyperparameter.
    """
    return TRAINING_METHODS.get(name, **kwargs)


def make_method(name: str, options: Dict[str, Any]) -> TrainingMethod:
    """Build a registered method from options, rejecting those it does not take (with the accepted list)."""
    return TRAINING_METHODS.make(name, options)


def method_names() -> List[str]:
    """Names of every registered training method."""
    return TRAINING_METHODS.names()

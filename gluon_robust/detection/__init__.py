"""Adversarial-example detectors, calibrated to a false-positive rate, and adaptive attacks on them.

Every detector scores inputs (higher = more suspicious), is fitted on clean
data where it learns anything, calibrated on held-out clean data to a target
false-positive rate, and evaluated by its true-positive rate at that rate and
its ROC-AUC; see :class:`~gluon_robust.detection.base.Detector`. Look
detectors up by name with :func:`get_detector` or from a
``NAME[:key=value,...]`` spec with :func:`detector_from_spec`.

>>> det = get_detector("magnet", epochs=10).fit(model, load_data("mnist-sample", split="train"))
>>> det.calibrate(det.score(model, x_heldout), fpr=0.05)
>>> det.evaluate(model, x_clean, x_adv)          # {'tpr_at_fpr': ..., 'fpr': ..., 'roc_auc': ...}
>>> AdaptiveAttack(eps=0.3)(model, det, x, y)    # attacks the classifier and the detector together
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Union

from ..errors import ConfigError
from ..registry import Registry
from .adaptive import (
    AdaptiveAttack, AdaptiveResult, DetectorAwareClassifier, detector_aware_loss, evasion_objective,
)
from .base import (
    Detector, clean_arrays, evaluate_scores, parse_spec, read_detector_file, roc_auc, threshold_at_fpr,
)
from .binary import BinaryCNN, BinaryDetector
from .confidence import EntropyDetector, MaxSoftmaxDetector
from .feature_squeezing import FeatureSqueezingDetector, bit_depth, median_filter
from .magnet import ConvAutoencoder, MagNetDetector
from .mahalanobis import GaussianClassModel, MahalanobisDetector, penultimate_features

__all__ = [
    "DETECTORS", "Detector", "get_detector", "make_detector", "detector_from_spec", "detector_names", "load_detector",
    "roc_auc", "threshold_at_fpr", "evaluate_scores", "clean_arrays", "parse_spec",
    "MaxSoftmaxDetector", "EntropyDetector", "FeatureSqueezingDetector", "MahalanobisDetector", "MagNetDetector",
    "BinaryDetector", "bit_depth", "median_filter", "GaussianClassModel", "penultimate_features", "ConvAutoencoder",
    "BinaryCNN", "AdaptiveAttack", "AdaptiveResult", "DetectorAwareClassifier", "detector_aware_loss",
    "evasion_objective",
]

# A TypeError is a value of the wrong type for a keyword the constructor does not check.
DETECTORS: Registry[Detector] = Registry("detector", name_errors=True, no_options="it accepts no options",
                                         wrap_errors=(TypeError,))
DETECTORS.register("confidence", "max-softmax", "msp")(MaxSoftmaxDetector)
DETECTORS.register("entropy")(EntropyDetector)
DETECTORS.register("feature-squeezing", "squeeze", "fs")(FeatureSqueezingDetector)
DETECTORS.register("mahalanobis", "lee2018")(MahalanobisDetector)
DETECTORS.register("magnet", "autoencoder")(MagNetDetector)
DETECTORS.register("binary", "binary-cnn")(BinaryDetector)


def get_detector(name: str, **kwargs: Any) -> Detector:
    """Build a registered detector, e.g. ``get_detector("feature-squeezing", squeezers="bits:1")``."""
    return DETECTORS.get(name, **kwargs)


def make_detector(name: str, options: Dict[str, Any]) -> Detector:
    """Build a registered detector, rejecting options it has no parameter for (ConfigError listing those it takes)."""
    return DETECTORS.make(name, options)


def detector_from_spec(spec: str) -> Detector:
    """A detector from ``NAME[:key=value,...]``, e.g. ``"magnet:epochs=5,p=2"``."""
    name, options = parse_spec(spec)
    return make_detector(name, options)


def detector_names() -> List[str]:
    """Names of every registered detector."""
    return DETECTORS.names()


def load_detector(path: Union[str, os.PathLike]) -> Detector:
    """A detector restored from a file written by :meth:`Detector.save` (configuration, state, threshold)."""
    meta, arrays = read_detector_file(path)
    name = meta.get("name")
    if name not in DETECTORS:
        raise ConfigError(f"{path}: saved detector {name!r} is not registered; valid names: {', '.join(detector_names())}")
    config = dict(meta.get("config") or {})
    if DETECTORS.resolve(name) == "binary":
        config.pop("attack", None)  # the attack only made the training data; it is not needed to score
    detector = make_detector(name, config)
    detector.restore(arrays, meta)
    return detector

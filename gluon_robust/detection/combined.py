"""A classifier and a calibrated detector as one network with a ``detected`` logit.

Carlini & Wagner (2017), "Adversarial Examples Are Not Easily Detected:
Bypassing Ten Detection Methods", AISec, https://arxiv.org/abs/1705.07263,
section 3.1::

    G(x)_k = z_k                                    for k < K
    G(x)_K = max_k z_k + kappa * (s(x) - tau) / sigma   ("detected")

``G`` predicts ``K`` exactly when the detector flags ``x``, so any gradient
attack run on it with :func:`detector_aware_loss` attacks both; its
``max(z_y, z_detected)`` objective is weak where the path to a
misclassification crosses flagged inputs (low confidence near the decision
boundary, for instance), which is why
:class:`~gluon_robust.detection.adaptive.AdaptiveAttack` does not use it.
It is kept as public API (exported by :mod:`gluon_robust.detection` and
tested) for users who want to run any registered attack on the combined
network.
"""

from __future__ import annotations

from typing import Any, Optional

from mxnet import gluon, nd

from ..attacks.losses import LossFn
from ..errors import ConfigError
from ..validation import check_positive
from .base import Detector

__all__ = ["DetectorAwareClassifier", "detector_aware_loss", "NEG"]

#: A logit low enough to mask a class out.
NEG = -1e30
_NEG = NEG


class DetectorAwareClassifier(gluon.Block):
    """A classifier and a calibrated detector as one network with a ``detected`` logit (index ``K``).

    It looks like a :class:`~gluon_robust.model.Classifier` to attacks: it has
    ``bounds``, ``ctx``, ``input_size``, ``num_classes`` (``K + 1``) and
    ``mode_free``.

    Parameters
    ----------
    model : Classifier
        The protected classifier.
    detector : Detector
        A fitted and calibrated detector.
    kappa : float
        Weight of the detector in the extra logit (logit units per clean score spread).
    """

    def __init__(self, model: Any, detector: Detector, *, kappa: float = 1.0) -> None:
        super().__init__()
        if detector.threshold is None:
            raise ConfigError(f"detector {detector.name} is not calibrated: call calibrate(clean_scores, fpr) first")
        self.kappa = check_positive("kappa", kappa)
        self.model = model
        self.detector = detector
        self.bounds = model.bounds
        self.ctx = model.ctx
        self.input_size = getattr(model, "input_size", None)
        self.num_classes = int(model.num_classes) + 1
        self.detected_class = int(model.num_classes)
        # The detectors' own networks have no BatchNorm or Dropout, so the combined
        # graph is mode free exactly when the classifier is.
        self.mode_free = bool(getattr(model, "mode_free", False))
        self.scale = float(detector.clean_scale or 1.0)

    def detection_logit(self, logits: nd.NDArray, score: nd.NDArray) -> nd.NDArray:
        """``max_k z_k + kappa * (score - threshold) / scale``, shape ``(N,)``."""
        return nd.max(logits, axis=1) + self.kappa * (score - self.detector.threshold) / self.scale

    def forward(self, x: nd.NDArray) -> nd.NDArray:  # noqa: D102 (Gluon's signature)
        logits = self.model(x)
        score = self.detector.score_nd(self.model, x, logits=logits)
        return nd.concat(logits, self.detection_logit(logits, score).reshape((-1, 1)), dim=1)


def _bad_mask(logits: nd.NDArray, labels: nd.NDArray) -> nd.NDArray:
    """One-hot of the true class plus the ``detected`` class (the last)."""
    k = logits.shape[1]
    detected = nd.one_hot(nd.full(labels.shape, k - 1, ctx=labels.context), k)
    return nd.clip(nd.one_hot(labels, k) + detected, 0, 1)


def _detector_aware_ce(logits: nd.NDArray, labels: nd.NDArray, target: Optional[nd.NDArray] = None) -> nd.NDArray:
    """``-log(p_y + p_detected)`` (untargeted), ``log p_target`` (targeted), on ``K + 1`` logits."""
    if target is not None:
        return nd.pick(nd.log_softmax(logits, axis=1), target, axis=1)
    bad = _bad_mask(logits, labels)
    masked = nd.where(bad, logits, nd.full(logits.shape, _NEG, ctx=logits.context))
    return _logsumexp(logits) - _logsumexp(masked)


def _detector_aware_margin(logits: nd.NDArray, labels: nd.NDArray, target: Optional[nd.NDArray] = None
                           ) -> nd.NDArray:
    """C&W margin on ``K + 1`` logits: best allowed class minus ``max(z_y, z_detected)`` (or the target's margin)."""
    neg = nd.full(logits.shape, _NEG, ctx=logits.context)
    if target is not None:
        others = nd.where(nd.one_hot(target, logits.shape[1]), neg, logits)
        return nd.pick(logits, target, axis=1) - nd.max(others, axis=1)
    bad = _bad_mask(logits, labels)
    return nd.max(nd.where(bad, neg, logits), axis=1) - nd.max(nd.where(bad, logits, neg), axis=1)


def _logsumexp(z: nd.NDArray) -> nd.NDArray:
    top = nd.max(z, axis=1, keepdims=True)
    top = nd.stop_gradient(top)
    return nd.log(nd.sum(nd.exp(nd.broadcast_sub(z, top)), axis=1)) + top.reshape((-1,))


def detector_aware_loss(name: str) -> LossFn:
    """The objective to ascend on :class:`DetectorAwareClassifier` logits: ``"ce"`` or ``"margin"``.

    Both treat the true class and ``detected`` (the last logit) as the classes
    to leave; the margin is positive exactly when the input is misclassified
    and not flagged.
    """
    losses: dict = {"ce": _detector_aware_ce, "margin": _detector_aware_margin, "cw": _detector_aware_margin}
    key = str(name).strip().lower()
    if key not in losses:
        raise ConfigError(f"loss must be one of ce, margin; got {name!r}")
    return losses[key]

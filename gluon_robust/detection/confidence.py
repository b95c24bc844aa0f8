"""Confidence monitoring: low maximum softmax probability or high predictive entropy.

Hendrycks & Gimpel (2017), "A Baseline for Detecting Misclassified and
Out-of-Distribution Examples in Neural Networks", ICLR,
https://arxiv.org/abs/1610.02136. Adversarial examples found by small-budget
or minimal-perturbation attacks sit near the decision boundary, where the
classifier is unsure; high-confidence attacks (PGD on cross-entropy) are
not detected by these scores, which is why they are baselines.

Both scores are exact functions of the logits and fully differentiable.
"""

from __future__ import annotations

from typing import Any, Optional

from mxnet import nd

from ..validation import check_positive
from .base import Detector

__all__ = ["MaxSoftmaxDetector", "EntropyDetector"]


def _logits(model: Any, x: nd.NDArray, logits: Optional[nd.NDArray]) -> nd.NDArray:
    return model(x) if logits is None else logits


class _SoftmaxDetector(Detector):
    """A detector that scores the tempered softmax of the logits; ``temperature`` is its one option."""

    def __init__(self, *, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def config(self) -> dict:
        return {"temperature": self.temperature}


class MaxSoftmaxDetector(_SoftmaxDetector):
    """Score ``1 - max_k softmax(z / T)_k``: the less confident, the more suspicious.

    Parameters
    ----------
    temperature : float
        Softmax temperature ``T`` (default 1; larger values spread the
        probabilities, as in ODIN, Liang et al. 2018, https://arxiv.org/abs/1706.02690).

    Examples
    --------
    >>> det = MaxSoftmaxDetector()
    >>> det.calibrate(det.score(model, x_clean_heldout), fpr=0.05)
    >>> det.flag(model, x_test)
    """

    name = "confidence"

    def score_nd(self, model: Any, x: nd.NDArray, logits: Optional[nd.NDArray] = None) -> nd.NDArray:
        probs = nd.softmax(_logits(model, x, logits) / self.temperature, axis=1)
        return 1.0 - nd.max(probs, axis=1)


class EntropyDetector(_SoftmaxDetector):
    """Score ``H(p) = -sum_k p_k log p_k`` of the softmax ``p = softmax(z / T)``, in nats.

    Parameters
    ----------
    temperature : float
        Softmax temperature ``T`` (default 1).
    """

    name = "entropy"

    def score_nd(self, model: Any, x: nd.NDArray, logits: Optional[nd.NDArray] = None) -> nd.NDArray:
        z = _logits(model, x, logits) / self.temperature
        logp = nd.log_softmax(z, axis=1)
        return -nd.sum(nd.exp(logp) * logp, axis=1)

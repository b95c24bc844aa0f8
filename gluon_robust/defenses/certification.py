"""The statistics of randomized smoothing: Clopper-Pearson bounds, the PREDICT decision, certified accuracy.

Cohen, Rosenfeld & Kolter (2019), "Certified Adversarial Robustness via
Randomized Smoothing", ICML, https://arxiv.org/abs/1902.02918. CERTIFY bounds
the top class's probability from below with a one-sided Clopper-Pearson bound
(:func:`clopper_pearson_lower`); PREDICT returns the top class only when a
two-sided binomial test of the top two counts rejects equality (:func:`decide`),
else it abstains (:data:`ABSTAIN`). Used by
:class:`~gluon_robust.defenses.smoothing.SmoothedClassifier`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Sequence

import numpy as np
from scipy.stats import beta, binomtest

from ..errors import ConfigError, DataError
from ..validation import check_positive

__all__ = ["ABSTAIN", "Certification", "clopper_pearson_lower", "certified_accuracy", "decide"]


#: The label :meth:`SmoothedClassifier.predict` and :meth:`SmoothedClassifier.certify` return when they abstain.
ABSTAIN = -1


def clopper_pearson_lower(successes: Any, trials: Any, alpha: float) -> np.ndarray:
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower confidence bound on a binomial proportion.

    The exact bound (Clopper & Pearson 1934): the ``p`` at which observing
    ``successes`` or more out of ``trials`` has probability exactly ``alpha``,
    i.e. the ``alpha`` quantile of ``Beta(k, n - k + 1)``; 0 when ``k = 0``.
    ``P(bound <= p) >= 1 - alpha`` for every true ``p``.

    Parameters
    ----------
    successes, trials : int or array of int
        ``k`` and ``n`` with ``0 <= k <= n``, ``n >= 1``.
    alpha : float
        Error level in (0, 1).

    Returns
    -------
    numpy.ndarray of float64
        The bounds, shaped like the broadcast of the inputs.
    """
    alpha = _check_alpha(alpha)
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n) or np.any(k != np.round(k)) or np.any(n != np.round(n)):
        raise ConfigError(f"need integers 0 <= successes <= trials, trials >= 1; got {successes!r} of {trials!r}")
    safe_k = np.maximum(k, 1.0)  # Beta(0, .) is undefined; the bound is 0 there
    return np.where(k > 0, beta.ppf(alpha, safe_k, n - safe_k + 1.0), 0.0)


def decide(counts: np.ndarray, alpha: float) -> int:
    """PREDICT's decision from one point's class counts: the top class if a two-sided binomial test
    of the top two counts rejects equality at level ``alpha``, else :data:`ABSTAIN`."""
    alpha = _check_alpha(alpha)
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")
    top, runner_up = int(counts[order[0]]), int(counts[order[1]])
    return int(order[0]) if binomtest(top, top + runner_up, 0.5).pvalue <= alpha else ABSTAIN


def certified_accuracy(
    predictions: np.ndarray, radii: np.ndarray, labels: np.ndarray, thresholds: Sequence[float]
) -> Dict[float, float]:
    """Fraction of points certified correct at each L2 radius: ``prediction == label`` and ``radius >= r``.

    Abstentions (:data:`ABSTAIN`) never count. At ``r = 0`` this is the
    accuracy of the non-abstained certified predictions.
    """
    predictions, radii, labels = np.asarray(predictions), np.asarray(radii), np.asarray(labels)
    if not predictions.shape == radii.shape == labels.shape:
        raise DataError(f"predictions {predictions.shape}, radii {radii.shape} and labels {labels.shape} "
                        "differ in shape")
    correct = (predictions == labels) & (predictions != ABSTAIN)
    n = max(len(labels), 1)
    return {float(r): float(np.sum(correct & (radii >= r)) / n) for r in thresholds}


@dataclass
class Certification:
    """What :meth:`SmoothedClassifier.certify` returns, one entry per point.

    Attributes
    ----------
    predictions : numpy.ndarray of int64, shape (N,)
        The certified class, or :data:`ABSTAIN`.
    radii : numpy.ndarray of float64, shape (N,)
        Certified L2 radius in pixel units; 0 where the point abstains.
    p_lower : numpy.ndarray of float64, shape (N,)
        Clopper-Pearson lower bound on the top class's probability under noise.
    counts : numpy.ndarray of int64, shape (N,)
        Estimation samples (of ``n``) on which the base classifier chose the selected class.
    selected : numpy.ndarray of int64, shape (N,)
        The class chosen from the ``n0`` selection samples (before abstention).
    """

    predictions: np.ndarray
    radii: np.ndarray
    p_lower: np.ndarray
    counts: np.ndarray
    selected: np.ndarray

    @property
    def abstained(self) -> np.ndarray:
        """Boolean mask of the points on which certification abstained."""
        return self.predictions == ABSTAIN


def _check_alpha(alpha: Any) -> float:
    value = check_positive("alpha", alpha)
    if value >= 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
    return value

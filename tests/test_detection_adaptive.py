"""Adaptive attacks on detectors: the combined network, the evasion objective, and that the attack evades."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
from mxnet import autograd, nd

from conftest import linear_classifier
from gluon_robust.attacks import PGD
from gluon_robust.attacks.base import gradient_recording
from gluon_robust.detection import (
    AdaptiveAttack, DetectorAwareClassifier, EntropyDetector, FeatureSqueezingDetector, MaxSoftmaxDetector,
    detector_aware_loss,
)
from gluon_robust.detection.adaptive import evasion_objective
from gluon_robust.detection.base import Detector
from gluon_robust.errors import ConfigError, DataError


class QuadraticDetector(Detector):
    """A tiny differentiable detector: squared distance of the input to the origin."""

    name = "quadratic"

    def score_nd(self, model, x: nd.NDArray, logits: Optional[nd.NDArray] = None) -> nd.NDArray:
        return nd.sum(nd.square(x).reshape((0, -1)), axis=1)


W = np.ones((2, 2), np.float32)


def calibrated_quadratic() -> QuadraticDetector:
    det = QuadraticDetector()
    det.calibrate(np.linspace(0.0, 0.15, 101), 0.05)  # threshold 0.1425, spread (IQR) 0.075
    return det


def test_extra_logit_is_max_logit_plus_scaled_score_and_grows_with_it() -> None:
    model = linear_classifier(W, -0.5)
    det = calibrated_quadratic()
    combined = DetectorAwareClassifier(model, det, kappa=2.0)
    assert combined.num_classes == 3 and combined.detected_class == 2 and combined.bounds == model.bounds
    x = (np.linspace(0.0, 0.5, 9)[:, None, None, None] * np.ones((1, 1, 2, 2))).astype(np.float32)
    out = combined(nd.array(x)).asnumpy()
    logits = model.predict(x)
    np.testing.assert_allclose(out[:, :2], logits, atol=1e-6)
    scores = (x.reshape(9, -1) ** 2).sum(1)
    expected = logits.max(1) + 2.0 * (scores - det.threshold) / det.clean_scale
    np.testing.assert_allclose(out[:, 2], expected, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(out[:, 2] - logits.max(1)) > 0)  # grows with the score
    np.testing.assert_array_equal(out.argmax(1) == 2, det.is_flagged(scores))  # "detected" wins iff flagged


def test_combined_gradient_matches_finite_differences() -> None:
    model = linear_classifier(np.array([[0.7, -1.3], [0.4, 2.0]], np.float32), 0.1)
    det = calibrated_quadratic()
    combined = DetectorAwareClassifier(model, det, kappa=1.5)
    x0 = np.random.default_rng(0).normal(0, 0.5, size=(3, 1, 2, 2)).astype(np.float32)
    for column in range(3):
        xv = nd.array(x0)
        xv.attach_grad()
        with gradient_recording(combined):
            out = combined(xv)[:, column].sum()
        out.backward()
        grad = xv.grad.asnumpy()
        h = 1e-2
        numeric = np.zeros_like(x0)
        for idx in np.ndindex(*x0.shape):
            plus, minus = x0.copy(), x0.copy()
            plus[idx] += h
            minus[idx] -= h
            f_plus = combined(nd.array(plus))[:, column].sum().asscalar()
            f_minus = combined(nd.array(minus))[:, column].sum().asscalar()
            numeric[idx] = (f_plus - f_minus) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-3)


def test_feature_squeezing_gradient_is_bpda_identity() -> None:
    x = nd.array(np.random.default_rng(0).random((2, 1, 6, 6)))
    x.attach_grad()
    with autograd.record():
        total = sum(nd.sum(s * 3.0) for s in FeatureSqueezingDetector(squeezers="bits:1+median:3").squeeze(x))
    total.backward()
    np.testing.assert_allclose(x.grad.asnumpy(), 6.0)


def test_entropy_detector_gradient_flows_into_the_combined_network() -> None:
    model = linear_classifier(W, 0.0)
    det = EntropyDetector()
    det.calibrate(np.linspace(0.0, 0.7, 50), 0.05)
    combined = DetectorAwareClassifier(model, det)
    xv = nd.array(np.full((1, 1, 2, 2), 0.2, np.float32))
    xv.attach_grad()
    with gradient_recording(combined):
        out = combined(xv)[:, 2].sum()
    out.backward()
    # logits [0, 0.8]: max logit 0.8 grows by 1 per unit of sum(x); entropy falls as the margin grows.
    p = 1 / (1 + np.exp(-0.8))
    d_entropy = -p * (1 - p) * np.log(p / (1 - p))
    expected = 1.0 + d_entropy / det.clean_scale
    np.testing.assert_allclose(xv.grad.asnumpy(), expected, rtol=1e-4)


@pytest.mark.parametrize("loss", ["margin", "ce"])
def test_loss_marks_success_as_misclassified_and_not_detected(loss: str) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=200)
    value = detector_aware_loss(loss)(nd.array(logits), nd.array(labels, dtype="float32"), None).asnumpy()
    success = (logits.argmax(1) != labels) & (logits.argmax(1) != 3)
    if loss == "margin":
        np.testing.assert_array_equal(value > 0, success)
    else:  # -log(p_y + p_detected) exceeds log 2 only where another class has most of the mass
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        np.testing.assert_allclose(value, -np.log(p[np.arange(200), labels] + p[:, 3]), rtol=1e-5)


def check_recomputed(model, det, x, y, result, eps: float, norm: str) -> None:
    """Success, flags and scores match fresh forward passes; the examples lie in the eps-ball and the bounds."""
    misclassified = model.predict(result.x_adv).argmax(1) != y
    scores = det.score(model, result.x_adv)
    np.testing.assert_array_equal(result.misclassified, misclassified)
    np.testing.assert_allclose(result.scores, scores, rtol=1e-6)
    np.testing.assert_array_equal(result.flagged, det.is_flagged(scores))
    np.testing.assert_array_equal(result.success, misclassified & ~det.is_flagged(scores))
    delta = (result.x_adv - x).reshape(len(x), -1)
    dist = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta**2).sum(1))
    assert np.all(dist <= eps + 1e-5)
    np.testing.assert_allclose(result.distance, dist, rtol=1e-4, atol=1e-6)
    low, high = model.bounds
    assert result.x_adv.min() >= low and result.x_adv.max() <= high


def test_evasion_objective_closed_forms_and_success_key() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=300)
    scores = rng.uniform(0.0, 2.0, size=300).astype(np.float32)
    others = np.where(np.eye(3)[labels] > 0, -np.inf, logits)
    margin = logits[np.arange(300), labels] - others.max(1)
    d = (scores - 1.0) / 0.5
    args = (nd.array(logits), nd.array(scores), nd.array(labels, dtype="float32"))
    value, key = evasion_objective(*args, threshold=1.0, scale=0.5, objective="weighted", c=3.0, confidence=0.4,
                                   score_margin=0.2)
    np.testing.assert_allclose(value.asnumpy(), -(np.maximum(margin, -0.4) + 3.0 * np.maximum(d + 0.2, 0)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(key.asnumpy() > 1e5, (logits.argmax(1) != labels) & (scores <= 1.0))
    value, _ = evasion_objective(*args, threshold=1.0, scale=0.5, objective="selective", confidence=0.4)
    np.testing.assert_allclose(value.asnumpy(), np.where(margin > -0.4, -margin, -d), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="objective must be one of selective, weighted; got 'sum'"):
        evasion_objective(*args, threshold=1.0, scale=0.5, objective="sum")


@pytest.mark.parametrize("norm,eps,options", [
    ("l2", 1.0, {}),
    ("linf", 0.3, {"selective": False, "c": (10.0,)}),
    ("linf", 0.3, {"c": ()}),
])
def test_adaptive_attack_evades_a_detector_that_catches_the_naive_attack(norm: str, eps: float, options: dict) -> None:
    # Class 1 needs sum(x) > 0.5; the detector flags ||x||^2 > 0.1425. Naive PGD goes far and is flagged; the
    # evading region (e.g. x_i = 0.14, ||x||^2 = 0.078) is reached only by an attack that knows the detector.
    model = linear_classifier(W, -0.5)
    det = calibrated_quadratic()
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.02, 0.02, size=(8, 1, 2, 2)).astype(np.float32)
    y = np.zeros(8, np.int64)
    assert np.all(model.predict(x).argmax(1) == 0) and not det.flag(model, x).any()
    naive = PGD(eps=eps, norm=norm, steps=40)(model, x, y)
    assert naive.success.all() and not (naive.success & ~det.flag(model, naive.x_adv)).any()
    result = AdaptiveAttack(eps=eps, norm=norm, steps=40, naive=False, **options)(
        model, det, x, y, candidates={"pgd": naive.x_adv})
    assert result.success.all()
    assert "pgd" not in set(result.source) and sum(result.wins().values()) == 8
    check_recomputed(model, det, x, y, result, eps, norm)


def test_adaptive_attack_crosses_the_flagged_band_of_a_confidence_detector() -> None:
    # Logits [0, sum(x) + 3]; max-softmax flags |sum(x) + 3| < log 4 (confidence < 0.8). To reach class 0 unflagged
    # the attack must cross the flagged band around the decision boundary and come out confident on the other side.
    model = linear_classifier(W, 3.0)
    det = MaxSoftmaxDetector()
    det.calibrate(np.linspace(0.0, 0.2 / 0.95, 201), 0.05)
    assert det.threshold == pytest.approx(0.2)
    x = np.random.default_rng(2).uniform(-0.05, 0.05, size=(6, 1, 2, 2)).astype(np.float32)
    y = np.ones(6, np.int64)
    assert not det.flag(model, x).any()
    result = AdaptiveAttack(eps=1.5, steps=30, naive=False)(model, det, x, y)
    assert result.success.all()
    assert np.all(model.predict(result.x_adv)[:, 1] < -np.log(4.0))  # on the far side of the band
    check_recomputed(model, det, x, y, result, 1.5, "linf")


def test_worst_case_keeps_every_evading_candidate_and_projects_them() -> None:
    model = linear_classifier(W, -0.5, bounds=(-1.0, 1.0))
    det = calibrated_quadratic()
    x = np.zeros((6, 1, 2, 2), np.float32)
    y = np.zeros(6, np.int64)
    evading = np.full_like(x, 0.14)            # sum 0.56 > 0.5, ||x||^2 = 0.078: misclassified, not flagged
    flagged = np.full_like(x, 0.3)             # misclassified, ||x||^2 = 0.36: flagged
    outside = np.full_like(x, 0.9)             # outside the eps-ball: projected to 0.3 (flagged)
    given = np.where(np.arange(6)[:, None, None, None] % 2 == 0, evading, flagged)
    # One weak step from the clean input cannot evade, so only the given candidates can.
    attack = AdaptiveAttack(eps=0.3, steps=1, step_size=1e-3, naive=False, warm_start=False)
    result = attack(model, det, x, y, candidates={"outside": outside, "given": given})
    given_evades = (model.predict(given).argmax(1) != y) & ~det.flag(model, given)
    np.testing.assert_array_equal(given_evades, np.arange(6) % 2 == 0)
    assert np.all(result.success >= given_evades)
    np.testing.assert_array_equal(result.source[given_evades], "given")
    np.testing.assert_array_equal(result.source[~given_evades], "outside")  # first misclassified candidate kept
    check_recomputed(model, det, x, y, result, 0.3, "linf")
    assert result.wins() == {"given": 3}


def test_adaptive_is_at_least_naive_on_every_sample_of_the_reference_setting() -> None:
    model = linear_classifier(np.array([[1.0, -0.5], [0.3, 0.8]], np.float32), -0.3, bounds=(-1.0, 1.0))
    det = calibrated_quadratic()
    x = np.random.default_rng(3).uniform(-0.3, 0.3, size=(12, 1, 2, 2)).astype(np.float32)
    y = model.predict(x).argmax(1)
    naive = PGD(eps=0.25, steps=10)(model, x, y)
    naive_evades = naive.success & ~det.flag(model, naive.x_adv)
    result = AdaptiveAttack(eps=0.25, steps=10, naive=False)(model, det, x, y, candidates={"naive": naive.x_adv})
    assert np.all(result.success >= naive_evades) and result.success.sum() > naive_evades.sum()
    check_recomputed(model, det, x, y, result, 0.25, "linf")


def test_adaptive_needs_a_calibrated_detector_and_valid_options() -> None:
    model = linear_classifier(W, 0.0)
    x, y = np.zeros((2, 1, 2, 2), np.float32), np.zeros(2, np.int64)
    with pytest.raises(ConfigError, match="is not calibrated"):
        DetectorAwareClassifier(model, QuadraticDetector())
    with pytest.raises(ConfigError, match="is not calibrated"):
        AdaptiveAttack(eps=0.1)(model, QuadraticDetector(), x, y)
    with pytest.raises(ConfigError, match="c must be > 0, got -1"):
        AdaptiveAttack(c=(1.0, -1))
    with pytest.raises(ConfigError, match="c must list at least one weight when selective=False"):
        AdaptiveAttack(selective=False, c=())
    with pytest.raises(ConfigError, match="norm must be one of linf, l2, l1; got 'l0'"):
        AdaptiveAttack(norm="l0")
    with pytest.raises(ConfigError, match="eps must be > 0, got 0"):
        AdaptiveAttack(eps=0)
    with pytest.raises(DataError, match=r"candidate 'bad' has shape \(1, 1, 2, 2\)"):
        AdaptiveAttack(eps=0.1, naive=False)(model, calibrated_quadratic(), x, y, candidates={"bad": x[:1]})
    with pytest.raises(ConfigError, match="kappa must be > 0, got 0"):
        DetectorAwareClassifier(model, calibrated_quadratic(), kappa=0)

"""Detectors: calibration, exact ROC-AUC, closed-form scores, fitting, persistence, registry."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from mxnet import nd

from conftest import linear_classifier
from gluon_robust.detection import (
    BinaryDetector, EntropyDetector, FeatureSqueezingDetector, GaussianClassModel, MagNetDetector,
    MahalanobisDetector, MaxSoftmaxDetector, bit_depth, detector_from_spec, detector_names, evaluate_scores,
    get_detector, load_detector, make_detector, median_filter, penultimate_features, roc_auc, threshold_at_fpr,
)
from gluon_robust.detection.base import parse_spec
from gluon_robust.errors import ConfigError, DataError, ModelError


# ------------------------------------------------------------------ calibration and ROC-AUC
@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.2])
def test_threshold_gives_target_fpr_on_held_out_scores(fpr: float) -> None:
    rng = np.random.default_rng(0)
    calib, held_out = rng.gamma(2.0, size=20000), rng.gamma(2.0, size=20000)
    threshold = threshold_at_fpr(calib, fpr)
    assert abs(np.mean(calib > threshold) - fpr) <= 1.0 / calib.size
    sampling_error = np.sqrt(fpr * (1 - fpr) / held_out.size)
    assert abs(np.mean(held_out > threshold) - fpr) < 4 * sampling_error


def test_calibrate_sets_threshold_and_flags_above_it() -> None:
    det = MaxSoftmaxDetector()
    scores = np.arange(100, dtype=float)
    threshold = det.calibrate(scores, 0.1)
    assert threshold == pytest.approx(np.quantile(scores, 0.9))
    assert det.is_flagged(scores).sum() == 10
    assert det.fpr == 0.1 and det.clean_scale == pytest.approx(49.5)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, "0.05", True])
def test_calibrate_rejects_bad_fpr(bad) -> None:
    with pytest.raises(ConfigError, match="fpr must be a number strictly between 0 and 1"):
        MaxSoftmaxDetector().calibrate([0.1, 0.2], bad)


def test_calibrate_rejects_nan_scores() -> None:
    with pytest.raises(DataError, match="NaN or infinite"):
        MaxSoftmaxDetector().calibrate([0.1, np.nan], 0.05)


def brute_force_auc(neg: np.ndarray, pos: np.ndarray) -> float:
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pairwise_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    neg = rng.integers(0, 6, size=int(rng.integers(1, 40))).astype(float)
    pos = rng.integers(2, 8, size=int(rng.integers(1, 40))).astype(float)
    assert roc_auc(neg, pos) == pytest.approx(brute_force_auc(neg, pos), abs=1e-12)


def test_roc_auc_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    neg, pos = rng.normal(size=300).round(1), rng.normal(0.7, size=200).round(1)
    expected = metrics.roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[neg, pos])
    assert roc_auc(neg, pos) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_known_cases() -> None:
    assert roc_auc([0.0, 1.0, 2.0], [3.0, 4.0]) == 1.0
    assert roc_auc([3.0, 4.0], [0.0, 1.0, 2.0]) == 0.0
    assert roc_auc([1.0] * 5, [1.0] * 7) == 0.5


def test_evaluate_scores_reports_rates_at_threshold() -> None:
    result = evaluate_scores([0.0, 1.0, 2.0, 3.0], [2.5, 3.5, 0.5], threshold=2.0)
    assert result["fpr"] == 0.25
    assert result["tpr_at_fpr"] == pytest.approx(2 / 3)
    assert result["roc_auc"] == pytest.approx(brute_force_auc(np.array([0, 1, 2, 3.0]), np.array([2.5, 3.5, 0.5])))
    assert (result["n_clean"], result["n_adversarial"]) == (4, 3)


# ------------------------------------------------------------------ confidence
def test_confidence_and_entropy_closed_form_on_linear_classifier() -> None:
    w = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)
    model = linear_classifier(w, 0.25)
    x = np.random.default_rng(0).normal(size=(12, 1, 2, 2)).astype(np.float32) * 0.5
    f = (x.reshape(12, -1) @ w.reshape(-1) + 0.25).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-f))
    np.testing.assert_allclose(MaxSoftmaxDetector().score(model, x), 1.0 - np.maximum(p, 1 - p), atol=1e-6)
    entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    np.testing.assert_allclose(EntropyDetector().score(model, x), entropy, atol=1e-5)
    # temperature T divides the logits
    p2 = 1.0 / (1.0 + np.exp(-f / 2.0))
    np.testing.assert_allclose(MaxSoftmaxDetector(temperature=2.0).score(model, x), 1.0 - np.maximum(p2, 1 - p2),
                               atol=1e-6)


# ------------------------------------------------------------------ feature squeezing
def test_bit_depth_levels_and_idempotence() -> None:
    x = nd.array(np.random.default_rng(0).random((3, 1, 5, 5)))
    for bits in (1, 3):
        squeezed = bit_depth(x, bits).asnumpy()
        levels = squeezed * (2**bits - 1)
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-5)
        assert np.abs(squeezed - x.asnumpy()).max() <= 0.5 / (2**bits - 1) + 1e-6
        np.testing.assert_allclose(bit_depth(nd.array(squeezed), bits).asnumpy(), squeezed, atol=1e-6)


@pytest.mark.parametrize("size", [2, 3])
def test_median_filter_matches_scipy(size: int) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(size).random((2, 2, 7, 6)).astype(np.float32)
    expected = ndimage.median_filter(x, size=(1, 1, size, size), mode="nearest")
    np.testing.assert_allclose(median_filter(nd.array(x), size).asnumpy(), expected, atol=1e-7)


def test_feature_squeezing_score_is_zero_on_squeezed_inputs(tiny_model) -> None:
    rng = np.random.default_rng(0)
    binary = (rng.random((6, 1, 8, 8)) > 0.5).astype(np.float32)
    np.testing.assert_allclose(FeatureSqueezingDetector(squeezers="bits:1").score(tiny_model, binary), 0.0, atol=1e-6)
    constant = np.full((3, 1, 8, 8), 0.0, np.float32)
    constant[1] = 1.0
    both = FeatureSqueezingDetector(squeezers=["bits:1", "median:2"])
    # float32 softmax of the same image in batches of other shapes differs in the last bits (~1e-7).
    np.testing.assert_allclose(both.score(tiny_model, constant), 0.0, atol=1e-6)
    noisy = rng.random((6, 1, 8, 8)).astype(np.float32)
    assert np.all(both.score(tiny_model, noisy) > 0)


def test_feature_squeezing_score_is_max_l1_over_squeezers(tiny_model) -> None:
    x = np.random.default_rng(1).random((5, 1, 8, 8)).astype(np.float32)
    softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
    p = softmax(tiny_model.predict(x))
    d_bits = np.abs(p - softmax(tiny_model.predict(bit_depth(nd.array(x), 1).asnumpy()))).sum(1)
    d_med = np.abs(p - softmax(tiny_model.predict(median_filter(nd.array(x), 2).asnumpy()))).sum(1)
    score = FeatureSqueezingDetector().score(tiny_model, x)
    np.testing.assert_allclose(score, np.maximum(d_bits, d_med), atol=1e-5)


@pytest.mark.parametrize("bad", ["bits:0", "bits:9", "median:x", "blur:2", ""])
def test_feature_squeezing_rejects_bad_squeezers(bad: str) -> None:
    with pytest.raises(ConfigError, match="squeezer"):
        FeatureSqueezingDetector(squeezers=bad)


# ------------------------------------------------------------------ Mahalanobis
def test_gaussian_model_ranks_outlier_highest_and_matches_reference() -> None:
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 0.1]])
    means = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 0.0], [-5.0, 5.0, 1.0]])
    labels = np.repeat(np.arange(3), 400)
    feats = means[labels] + rng.multivariate_normal(np.zeros(3), cov, size=len(labels))
    model = GaussianClassModel().fit(feats, labels)
    np.testing.assert_allclose(model.means, means, atol=0.2)
    # The outlier is close in Euclidean terms but against the correlation (and the small third variance).
    test = np.vstack([means[labels[:50]] + rng.multivariate_normal(np.zeros(3), cov, size=50), [[1.0, -1.0, 0.8]]])
    scores = model.score_nd(nd.array(test)).asnumpy()
    assert np.argmax(scores) == len(test) - 1
    np.testing.assert_allclose(scores, model.score(test), rtol=1e-3, atol=1e-3)
    # Squared Mahalanobis distances of in-distribution points are chi-square with 3 degrees of freedom.
    assert 2.0 < np.mean(model.score(feats)) < 4.0


def test_penultimate_features_of_a_dense_net_are_the_normalised_input() -> None:
    model = linear_classifier(np.ones((1, 3, 3), np.float32), 0.0)
    x = np.random.default_rng(0).random((4, 1, 3, 3)).astype(np.float32)
    feats = penultimate_features(model)(nd.array(x)).asnumpy()
    np.testing.assert_allclose(feats, x.reshape(4, -1), atol=1e-6)


def test_mahalanobis_detector_on_tiny_model_flags_off_manifold_inputs(tiny_model) -> None:
    rng = np.random.default_rng(0)
    clean = np.clip(0.5 + 0.05 * rng.standard_normal((300, 1, 8, 8)), 0, 1).astype(np.float32)
    det = MahalanobisDetector().fit(tiny_model, clean)
    assert det.features(tiny_model)(nd.array(clean[:2])).shape == (2, 16)
    det.calibrate(det.score(tiny_model, clean[200:]), 0.05)
    far = rng.random((50, 1, 8, 8)).astype(np.float32)
    result = det.evaluate(tiny_model, clean[200:], far)
    assert result["roc_auc"] > 0.95


def test_mahalanobis_rejects_unknown_layer(tiny_model) -> None:
    with pytest.raises(ModelError, match="is not an output of the classifier's graph"):
        MahalanobisDetector(layer="nope").fit(tiny_model, np.zeros((4, 1, 8, 8), np.float32))


# ------------------------------------------------------------------ MagNet
def smooth_images(n: int, seed: int) -> np.ndarray:
    """Blobs on an 8x8 grid: a clean manifold an autoencoder can learn quickly."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(8), np.arange(8), indexing="ij"))
    centres = rng.uniform(1, 6, size=(n, 2, 1, 1))
    return np.exp(-((grid[None] - centres) ** 2).sum(1) / 4.0)[:, None].astype(np.float32)


def test_magnet_training_lowers_reconstruction_error_and_detects_noise(tiny_model) -> None:
    train, held = smooth_images(256, 0), smooth_images(64, 1)
    det = MagNetDetector(epochs=1, filters=4, batch_size=32, seed=0)
    det.fit(tiny_model, train)
    before = det.score(tiny_model, held).mean()
    det = MagNetDetector(epochs=25, filters=4, batch_size=32, seed=0).fit(tiny_model, train)
    after = det.score(tiny_model, held).mean()
    assert det.loss_history[-1] < det.loss_history[0]
    assert after < 0.6 * before
    det.calibrate(det.score(tiny_model, held), 0.05)
    noisy = np.clip(held + 0.3 * np.random.default_rng(2).standard_normal(held.shape), 0, 1).astype(np.float32)
    assert det.evaluate(tiny_model, held, noisy)["roc_auc"] > 0.9


# ------------------------------------------------------------------ binary
def test_binary_detector_separates_a_separable_toy_set(tiny_model) -> None:
    rng = np.random.default_rng(0)
    checker = (np.indices((8, 8)).sum(0) % 2).astype(np.float32)[None]

    def toy(n: int, seed: int):
        r = np.random.default_rng(seed)
        clean = (0.3 + 0.4 * r.random((n, 1, 1, 1)) * np.ones((1, 8, 8))).astype(np.float32)
        return clean, np.clip(clean + 0.2 * (checker - 0.5), 0, 1).astype(np.float32)

    clean, adv = toy(128, 0)
    det = BinaryDetector(epochs=15, filters=4, seed=rng.integers(100)).fit_pairs(tiny_model, clean, adv)
    assert det.train_accuracy >= 0.95
    clean2, adv2 = toy(64, 1)
    det.calibrate(det.score(tiny_model, clean2), 0.05)
    result = det.evaluate(tiny_model, clean2, adv2)
    assert result["roc_auc"] > 0.95 and result["tpr_at_fpr"] > 0.8


# ------------------------------------------------------------------ contract, persistence, registry
def test_unfitted_and_uncalibrated_detectors_refuse(tiny_model) -> None:
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(ConfigError, match="is not fitted"):
        MahalanobisDetector().score(tiny_model, x)
    with pytest.raises(ConfigError, match="is not calibrated"):
        EntropyDetector().flag(tiny_model, x)


def test_save_and_load_round_trip(tiny_model, tmp_path) -> None:
    rng = np.random.default_rng(0)
    clean = np.clip(0.5 + 0.1 * rng.standard_normal((64, 1, 8, 8)), 0, 1).astype(np.float32)
    x = rng.random((5, 1, 8, 8)).astype(np.float32)
    for det in (MahalanobisDetector(), MagNetDetector(epochs=1, filters=2),
                BinaryDetector(epochs=1, filters=2).fit_pairs(tiny_model, clean, x)):
        if not det.fitted:
            det.fit(tiny_model, clean)
        det.calibrate(det.score(tiny_model, clean), 0.1)
        path = tmp_path / f"{det.name}.npz"
        det.save(path)
        loaded = load_detector(path)
        assert type(loaded) is type(det) and loaded.threshold == det.threshold and loaded.fpr == 0.1
        np.testing.assert_allclose(loaded.score(tiny_model, x), det.score(tiny_model, x), rtol=1e-6)
        assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_load_detector_rejects_foreign_file(tmp_path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, a=np.zeros(2))
    with pytest.raises(DataError, match="is not a detector params file"):
        load_detector(path)


def test_registry_and_spec_parsing() -> None:
    assert set(detector_names()) == {"binary", "confidence", "entropy", "feature-squeezing", "magnet", "mahalanobis"}
    assert isinstance(get_detector("msp"), MaxSoftmaxDetector)
    assert parse_spec("Magnet:epochs=5,lr=1/100,p=2") == ("magnet", {"epochs": 5, "lr": 0.01, "p": 2})
    det = detector_from_spec("feature-squeezing:squeezers=bits:2+median:3")
    assert det.squeezers == ["bits:2", "median:3"]
    with pytest.raises(ConfigError, match="unknown detector 'magnett'.*did you mean magnet"):
        get_detector("magnett")
    with pytest.raises(ConfigError, match="does not take foo; it accepts"):
        make_detector("entropy", {"foo": 1})
    with pytest.raises(ConfigError, match="option must be key=value"):
        detector_from_spec("magnet:epochs")


@pytest.mark.parametrize(
    "factory, kwargs, message",
    [
        (MagNetDetector, {"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        (MagNetDetector, {"p": 3}, "p must be 1 or 2, got 3"),
        (MagNetDetector, {"lr": -1.0}, "lr must be > 0, got -1.0"),
        (MaxSoftmaxDetector, {"temperature": 0}, "temperature must be > 0, got 0"),
        (BinaryDetector, {"max_samples": 1}, "max_samples must be an integer >= 2, got 1"),
        (BinaryDetector, {"attack": "nope"}, "unknown attack 'nope'"),
        (MahalanobisDetector, {"ridge": -1.0}, "ridge must be >= 0, got -1.0"),
    ],
)
def test_hyperparameters_are_validated(factory, kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        factory(**kwargs)


# ------------------------------------------------------------------ real data (slow)
@pytest.mark.slow
@pytest.mark.parametrize("name", ["feature-squeezing", "mahalanobis", "magnet"])
def test_held_out_fpr_is_within_two_points_of_target_on_reference_model(name: str) -> None:
    from gluon_robust.data import load_data
    from gluon_robust.model import load_classifier

    model = load_classifier("mnist_resnet20")
    x_test, _ = load_data("mnist-sample", split="test").arrays()
    det = get_detector(name).fit(model, load_data("mnist-sample", split="train"))
    det.calibrate(det.score(model, x_test[:500]), 0.05)
    assert abs(det.flag(model, x_test[500:]).mean() - 0.05) <= 0.02

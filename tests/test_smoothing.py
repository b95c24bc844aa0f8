"""Randomized smoothing (closed forms on linear models, the Clopper-Pearson bound), Gaussian training, `certify`."""

from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd
from scipy.stats import binom, norm

from conftest import linear_classifier
from gluon_robust.cli import main
from gluon_robust.defenses.smoothing import (
    ABSTAIN, SmoothedClassifier, SoftSmoothed, certified_accuracy, clopper_pearson_lower,
)
from gluon_robust.errors import ConfigError, DataError
from gluon_robust.model import load_classifier
from gluon_robust.training import get_method, make_method, method_names
from gluon_robust.training.adversarial import cross_entropy
from gluon_robust.training.gaussian_augmentation import GaussianAugmentation
from training_helpers import stats, tiny_data, trainable, training_model, values

# A linear two-class model with logits [0, w.x + b]: ||w|| = 5, so a point at logit m lies at L2 distance
# |m| / 5 from the boundary, and under N(0, sigma^2 I) noise P(class 1) = Phi(m / (5 sigma)).
W = np.array([3.0, 4.0, 0.0, 0.0], np.float32)
W_NORM = 5.0


def _linear_points(margins) -> np.ndarray:
    """Inputs (N, 1, 1, 4) whose logit w.x equals each margin."""
    x = np.zeros((len(margins), 1, 1, 4), np.float32)
    x[:, 0, 0, 0] = 3.0 * np.asarray(margins, np.float32) / W_NORM ** 2
    x[:, 0, 0, 1] = 4.0 * np.asarray(margins, np.float32) / W_NORM ** 2
    return x


@pytest.fixture(scope="module")
def linear():
    return linear_classifier(W, 0.0)


# ------------------------------------------------------------------ Clopper-Pearson
def test_clopper_pearson_known_values():
    # k = n: P(K = n) = p^n = alpha at p = alpha^(1/n); k = 0: the bound is 0.
    np.testing.assert_allclose(clopper_pearson_lower(100, 100, 0.001), 0.001 ** (1 / 100), rtol=1e-10)
    np.testing.assert_allclose(clopper_pearson_lower(1000, 1000, 0.05), 0.05 ** (1 / 1000), rtol=1e-10)
    assert clopper_pearson_lower(0, 50, 0.01) == 0.0
    # The defining equation: P(K >= k | p = bound) = alpha.
    for k, n, alpha in [(1, 10, 0.05), (37, 50, 0.001), (990, 1000, 0.001), (500, 1000, 0.01)]:
        bound = float(clopper_pearson_lower(k, n, alpha))
        assert binom.sf(k - 1, n, bound) == pytest.approx(alpha, rel=1e-6)
        assert bound < k / n


def test_clopper_pearson_coverage_by_exhaustive_summation():
    """For every p on a grid, P_{K ~ Bin(n, p)}(bound(K) > p) <= alpha, and the bound is not loose."""
    n, alpha = 30, 0.05
    bounds = clopper_pearson_lower(np.arange(n + 1), n, alpha)
    assert np.all(np.diff(bounds) > 0)
    failures = [binom.pmf(np.arange(n + 1), n, p)[bounds > p].sum() for p in np.linspace(0.001, 0.999, 999)]
    assert max(failures) <= alpha + 1e-12
    assert max(failures) > 0.6 * alpha  # exact: the worst case comes close to alpha


def test_clopper_pearson_rejects_bad_counts():
    with pytest.raises(ConfigError, match="successes <= trials"):
        clopper_pearson_lower(11, 10, 0.01)
    with pytest.raises(ConfigError, match="alpha"):
        clopper_pearson_lower(5, 10, 1.5)


# ------------------------------------------------------------------ certify / predict
def test_certified_radius_is_just_below_the_exact_radius_of_a_linear_model(linear):
    sigma, n, alpha = 0.5, 2000, 0.001
    margins = np.array([2.5, -3.5, 5.0, -6.0])  # pA = Phi(|m| / 2.5): 0.84, 0.92, 0.98, 0.99
    cert = SmoothedClassifier(linear, sigma=sigma, batch_size=500).certify(_linear_points(margins), n0=100, n=n,
                                                                         alpha=alpha)
    np.testing.assert_array_equal(cert.predictions, (margins > 0).astype(int))
    exact = np.abs(margins) / W_NORM  # = sigma * Phi^-1(pA), the distance to the boundary
    assert np.all(cert.radii < exact)
    # Far below only if the count fell more than 4 standard deviations short of n * pA.
    p_a = norm.cdf(np.abs(margins) / (sigma * W_NORM))
    unlucky = np.floor(n * p_a - 4 * np.sqrt(n * p_a * (1 - p_a)))
    floor = sigma * norm.ppf(clopper_pearson_lower(unlucky, n, alpha))
    assert np.all(cert.radii > floor)
    np.testing.assert_allclose(cert.p_lower, clopper_pearson_lower(cert.counts, n, alpha))


def test_a_point_far_from_the_boundary_gets_the_closed_form_radius(linear):
    """Every noisy copy is class 1, so pA_lower = alpha^(1/n) and the radius is sigma * Phi^-1 of it."""
    sigma, n, alpha = 0.25, 500, 0.001
    cert = SmoothedClassifier(linear, sigma=sigma).certify(_linear_points([100.0]), n0=10, n=n, alpha=alpha)
    assert cert.counts[0] == n
    np.testing.assert_allclose(cert.radii[0], sigma * norm.ppf(alpha ** (1 / n)), rtol=1e-9)


def test_a_tie_abstains(linear):
    """On the boundary both classes have probability 1/2: predict and certify abstain."""
    x = _linear_points([0.0, 0.0, 4.0])
    x[1, 0, 0, 2:] = [0.3, -0.7]  # another boundary point (w is 0 there)
    smoothed = SmoothedClassifier(linear, sigma=0.5, seed=3)
    np.testing.assert_array_equal(smoothed.predict(x, n=1000, alpha=0.001), [ABSTAIN, ABSTAIN, 1])
    cert = smoothed.certify(x, n0=100, n=1000, alpha=0.001)
    np.testing.assert_array_equal(cert.predictions, [ABSTAIN, ABSTAIN, 1])
    np.testing.assert_array_equal(cert.radii[:2], [0.0, 0.0])
    assert np.all(cert.p_lower[:2] < 0.5) and cert.radii[2] > 0


def test_the_seed_reproduces_and_a_point_does_not_depend_on_its_batch(linear):
    x = _linear_points([0.3, -0.2, 0.1, 0.05])
    first = SmoothedClassifier(linear, sigma=0.5, seed=7).certify(x, n0=50, n=300)
    again = SmoothedClassifier(linear, sigma=0.5, seed=7).certify(x, n0=50, n=300)
    alone = SmoothedClassifier(linear, sigma=0.5, seed=7).certify(x[2:3], n0=50, n=300)
    other = SmoothedClassifier(linear, sigma=0.5, seed=8).certify(x, n0=50, n=300)
    for field in ("predictions", "radii", "p_lower", "counts", "selected"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
        np.testing.assert_array_equal(getattr(first, field)[2:3], getattr(alone, field))
    assert not np.array_equal(first.counts, other.counts)


def test_counts_follow_the_closed_form_probability(linear):
    """The noise really is N(0, sigma^2): the class-1 frequency matches Phi(m / (sigma ||w||))."""
    sigma, n = 0.4, 4000
    for m in (0.5, 1.5):
        counts = SmoothedClassifier(linear, sigma=sigma).sample_counts(_linear_points([m])[0], n)
        p = norm.cdf(m / (sigma * W_NORM))
        assert counts.sum() == n
        assert abs(counts[1] / n - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_certified_accuracy_at_radius_zero_is_at_most_the_smoothed_accuracy(mnist_test):
    model = load_classifier("mnist_resnet20")
    x, y = mnist_test[0][:12], mnist_test[1][:12]
    smoothed = SmoothedClassifier(model, sigma=0.2, batch_size=200)
    cert = smoothed.certify(x, n0=50, n=200, alpha=0.001)
    predicted = smoothed.predict(x, n=200, alpha=0.001)
    table = certified_accuracy(cert.predictions, cert.radii, y, [0.0, 0.25, 0.5])
    assert table[0.0] <= np.mean(predicted == y)
    assert table[0.0] >= table[0.25] >= table[0.5]
    assert table[0.0] == np.mean((cert.predictions == y) & ~cert.abstained)
    assert table[0.0] >= 0.5  # the undefended model still gets most digits right at sigma 0.2


def test_certified_accuracy_counts_only_correct_non_abstained_points_with_a_large_enough_radius():
    table = certified_accuracy(np.array([1, 2, ABSTAIN, 0]), np.array([0.3, 0.9, 0.0, 0.5]), np.array([1, 0, 3, 0]),
                               [0.0, 0.3, 0.5, 0.6])
    assert table == {0.0: 0.5, 0.3: 0.5, 0.5: 0.25, 0.6: 0.0}


def test_bad_hyperparameters_name_the_parameter(linear):
    with pytest.raises(ConfigError, match="sigma must be > 0, got -0.1"):
        SmoothedClassifier(linear, sigma=-0.1)
    smoothed = SmoothedClassifier(linear, sigma=0.1)
    with pytest.raises(ConfigError, match="n0 must be an integer >= 1, got 0"):
        smoothed.certify(_linear_points([1.0]), n0=0)
    with pytest.raises(ConfigError, match="alpha must be in"):
        smoothed.predict(_linear_points([1.0]), alpha=1.0)
    with pytest.raises(DataError, match="expects"):
        smoothed.predict(np.zeros((2, 1, 1, 5), np.float32))
    with pytest.raises(ConfigError, match="must have ctx"):
        SmoothedClassifier(gluon.nn.Dense(2), sigma=0.1)


# ------------------------------------------------------------------ the attack view (EOT)
def test_soft_smoothed_view_estimates_the_mean_softmax(linear):
    """exp(output) estimates E[softmax(f(x + e))]; for the linear model, E[sigmoid(m + sigma ||w|| Z)] by quadrature."""
    sigma, m, k = 0.4, 1.0, 4000
    view = SmoothedClassifier(linear, sigma=sigma).attack_view(samples=k)
    mx.random.seed(0)
    out = view.predict(_linear_points([m]))
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0, rtol=1e-5)
    nodes, weights = np.polynomial.hermite.hermgauss(80)
    sigmoid = 1.0 / (1.0 + np.exp(-(m + sigma * W_NORM * np.sqrt(2.0) * nodes)))
    mean, second = weights @ sigmoid / np.sqrt(np.pi), weights @ sigmoid ** 2 / np.sqrt(np.pi)
    assert abs(np.exp(out[0, 1]) - mean) < 4 * np.sqrt((second - mean ** 2) / k)
    # ... which is not the hard probability Phi(m / (sigma ||w||)) that certify bounds
    assert abs(mean - norm.cdf(m / (sigma * W_NORM))) > 0.03
    assert view.bounds == linear.bounds and view.num_classes == 2 and view.mode_free == linear.mode_free


def test_soft_smoothed_gradient_matches_the_base_gradient_at_tiny_noise(tiny_model, tiny_batch):
    x, y = tiny_batch
    view = SoftSmoothed(tiny_model, sigma=1e-6, samples=3)
    grads = []
    for model in (view, tiny_model):
        xv = nd.array(x)
        xv.attach_grad()
        with autograd.record(train_mode=tiny_model.mode_free):
            loss = cross_entropy(model(xv), nd.array(y))
        loss.backward()
        grads.append(xv.grad.asnumpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------ Gaussian-noise training
X, Y = tiny_data()


def test_gaussian_method_is_registered_with_its_hyperparameters():
    assert "gaussian" in method_names()
    method = get_method("noise", sigma=0.5, clip=True, seed=2)
    assert isinstance(method, GaussianAugmentation) and method.sigma == 0.5 and method.clip
    with pytest.raises(ConfigError, match="gaussian does not take eps"):
        make_method("gaussian", {"eps": 0.3})
    with pytest.raises(ConfigError, match="sigma must be > 0, got 0"):
        GaussianAugmentation(sigma=0)


def test_gaussian_noise_has_the_requested_scale_and_clipping_keeps_the_bounds():
    model = training_model(bn=False)
    many, labels = tiny_data(n=128, seed=5)
    x, y = nd.array(many), nd.array(labels)
    noise = (GaussianAugmentation(sigma=0.3).perturb(model, x, y) - x).asnumpy()
    assert abs(noise.std() - 0.3) < 0.01 and abs(noise.mean()) < 0.01
    clipped = GaussianAugmentation(sigma=0.3, clip=True).perturb(model, x, y).asnumpy()
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0 and (noise + x.asnumpy() < 0).any()


def test_gaussian_loss_is_the_cross_entropy_on_its_noisy_batch_and_one_step_lowers_it():
    model = training_model()
    method = GaussianAugmentation(sigma=0.2, seed=1)
    trainer = gluon.Trainer(model.net.collect_params(), "sgd", {"learning_rate": 0.05})
    x, y = nd.array(X), nd.array(Y)

    def objective() -> float:
        state = method.state_dict()
        with autograd.record():
            value = method(model, x, y).mean()
        method.load_state_dict(state)
        return float(value.asscalar())

    before = objective()
    state = method.state_dict()
    noisy = method.perturb(model, x, y)  # the draw of the coming call
    with autograd.record():
        loss = method(model, x, y)
        expected = cross_entropy(model(noisy), y)
    np.testing.assert_allclose(loss.asnumpy(), expected.asnumpy(), rtol=1e-5)
    loss.backward()
    trainer.step(len(Y))
    method.load_state_dict(state)
    assert objective() < before


def test_gaussian_training_changes_parameters_only_through_trainer_step():
    model = training_model()
    weights, running = values(trainable(model)), values(stats(model))
    with autograd.record():
        loss = GaussianAugmentation(sigma=0.25)(model, nd.array(X), nd.array(Y))
    loss.backward()
    for key, value in values(trainable(model)).items():
        np.testing.assert_array_equal(value, weights[key])
    trainer = gluon.Trainer(model.net.collect_params(), "sgd", {"learning_rate": 0.05})
    trainer.step(len(Y))
    assert any(not np.array_equal(v, weights[k]) for k, v in values(trainable(model)).items())
    assert set(values(stats(model))) == set(running)


def test_gaussian_noise_of_a_sample_does_not_depend_on_its_shard():
    model = training_model(bn=False)
    x, y = nd.array(X), nd.array(Y)
    whole = GaussianAugmentation(sigma=0.3, seed=4).perturb(model, x, y).asnumpy()
    parts = [GaussianAugmentation(sigma=0.3, seed=4).perturb(model, x[lo:hi], y[lo:hi]).asnumpy()
             for lo, hi in ((0, 5), (5, 16))]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


# ------------------------------------------------------------------ the CLI
def test_cli_certify_writes_a_consistent_report(tmp_path, capsys):
    out = tmp_path / "cert"
    code = main(["certify", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "4", "--sigma", "0.25",
                 "--n0", "20", "--n", "100", "--alpha", "0.01", "--radii", "0,0.2,0.4", "--batch-size", "60",
                 "--seed", "3", "--no-progress", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "certify.json").read_text())
    points = report["points"]
    assert report["n_points"] == len(points) == 4 and report["seed"] == 3 and "mxnet" in report["versions"]
    for radius in (0.0, 0.2, 0.4):
        expected = np.mean([p["correct"] and not p["abstain"] and p["radius"] >= radius for p in points])
        assert report["certified_accuracy"][f"{radius:g}"] == pytest.approx(expected)
    for p in points:
        assert p["abstain"] == (p["prediction"] == ABSTAIN) and (p["radius"] == 0.0 or not p["abstain"])
        assert p["radius"] <= report["max_certifiable_radius"] + 1e-12
    assert report["max_certifiable_radius"] == pytest.approx(0.25 * norm.ppf(0.01 ** (1 / 100)))
    # Same seed, same model: the library call agrees with the report.
    model = load_classifier("mnist_resnet20")
    from gluon_robust.data import load_data
    x, _ = load_data("mnist-sample", split="test", limit=4).arrays()
    cert = SmoothedClassifier(model, sigma=0.25, seed=3, batch_size=60).certify(x, n0=20, n=100, alpha=0.01)
    np.testing.assert_allclose([p["radius"] for p in points], cert.radii)
    printed = capsys.readouterr().out
    assert "L2 radius" in printed and "certified accuracy" in printed


@pytest.mark.parametrize("flag, value, pattern", [
    ("--sigma", "0", "sigma must be > 0, got 0.0"),
    ("--sigma", "-0.5", "sigma must be > 0"),
    ("--n", "0", "n must be an integer >= 1, got 0"),
    ("--alpha", "2", "alpha must be a number strictly between 0 and 1"),
    ("--radii", "0,-1", "radius must be >= 0"),
])
def test_cli_certify_bad_input_is_one_line_with_exit_2(flag, value, pattern, tmp_path, capsys):
    out = tmp_path / "never"
    code = main(["certify", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "2", flag, value,
                 "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and pattern in err[0]
    assert not out.exists()

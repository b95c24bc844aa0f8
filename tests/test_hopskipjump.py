"""HopSkipJump: the paths, the start, and convergence to the closed-form boundary distance."""

from __future__ import annotations

import numpy as np
import pytest

from gluon_robust.attacks.blackbox import CallableModel, QueryCounter, noise_start
from gluon_robust.attacks.hopskipjump import HopSkipJump, box
from gluon_robust.model import load_classifier

from conftest import linear_classifier


def _linear(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, 4)).astype(np.float32)
    x = rng.uniform(-1, 1, size=(4, 1, 4, 4)).astype(np.float32)
    f = x.reshape(4, -1).astype(np.float64) @ w.reshape(-1)
    model = linear_classifier(w, b=0.0, bounds=(-10.0, 10.0))
    # As a callable, so that success is the label each returned point got when it was queried: the attack
    # gets within float noise of this boundary, where a re-evaluation in another batch may flip the label.
    target = CallableModel(model.predict, bounds=model.bounds, num_classes=2)
    return target, w, x, f, (f > 0).astype(np.int64)


def test_the_linf_path_shrinks_the_box():
    rng = np.random.default_rng(0)
    x, x_adv = rng.uniform(size=(2, 3, 4, 4)), rng.uniform(size=(2, 3, 4, 4))
    np.testing.assert_allclose(box(x, x_adv, np.ones(2)), x_adv, atol=1e-7)
    np.testing.assert_allclose(box(x, x_adv, np.zeros(2)), x, atol=1e-7)
    dist = np.abs(x_adv - x).reshape(2, -1).max(axis=1)
    half = np.abs(box(x, x_adv, np.full(2, 0.5)) - x).reshape(2, -1).max(axis=1)
    np.testing.assert_allclose(half, dist / 2, rtol=1e-6)


@pytest.mark.parametrize("norm,dual", [("l2", 2), ("linf", 1)])
def test_converges_to_the_minimal_distance_of_a_linear_model(norm, dual):
    model, w, x, f, y = _linear()
    minimal = np.abs(f) / np.linalg.norm(w.reshape(-1), ord=dual)
    result = HopSkipJump(norm=norm, max_queries=1500)(model, x, y)
    assert result.success.all()
    assert (result.distance >= minimal * (1 - 1e-3)).all()
    assert (result.distance <= minimal * 1.1).all(), result.distance / minimal


def test_with_eps_it_stops_once_within_and_fails_cleanly_otherwise():
    model, w, x, f, y = _linear()
    minimal = np.abs(f) / np.linalg.norm(w.reshape(-1))
    within = HopSkipJump(eps=float(1.5 * minimal.max()), max_queries=1500)(model, x, y)
    assert within.success.all() and (within.queries < 1500).all()
    out_of_reach = HopSkipJump(eps=float(0.9 * minimal.min()), max_queries=300)(model, x, y)
    assert not out_of_reach.success.any()
    np.testing.assert_array_equal(out_of_reach.x_adv, x)  # a failed sample returns its clean input
    np.testing.assert_array_equal(out_of_reach.queries, 300)


def test_an_adversarial_clean_input_costs_one_query(tiny_model, tiny_batch):
    x, y = tiny_batch
    wrong = (y + 1) % 10
    result = HopSkipJump(max_queries=100)(tiny_model, x, wrong)
    np.testing.assert_array_equal(result.queries, 1)
    np.testing.assert_array_equal(result.x_adv, x)
    assert result.success.all()


def test_coarse_noise_starts_where_full_resolution_noise_is_one_class(mnist_test):
    # The reference model calls every full-resolution uniform noise image an 8; coarser noise is not.
    model = load_classifier("mnist_resnet20")
    x, y = mnist_test
    x, y = x[:200], y[:200]
    eights = np.flatnonzero((y == 8) & (model.predict(x).argmax(axis=1) == y))[:4]
    assert len(eights) == 4 and (model.predict(np.random.default_rng(0).random((8, 1, 28, 28), np.float32)).argmax(1) == 8).all()
    oracle = QueryCounter(model, max_queries=20, labels_only=True)
    oracle.start(x[eights])
    rngs = [np.random.default_rng(i) for i in range(len(eights))]
    points, found = noise_start(oracle, x[eights], y[eights], None, np.arange(len(eights)), rngs, tries=20)
    assert found.all()
    assert (model.predict(points).argmax(axis=1) != 8).all()

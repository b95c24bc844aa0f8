"""NES and bandits: the gradient estimates against closed forms, and the projected descent they drive."""

from __future__ import annotations

import numpy as np
import pytest

from gluon_robust.attacks.bandits import Bandits
from gluon_robust.attacks.blackbox import QueryCounter
from gluon_robust.attacks.nes import NES

from conftest import linear_classifier


def _linear(seed: int = 0, side: int = 4):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(side, side)).astype(np.float32)
    x = rng.uniform(0.3, 0.7, size=(4, 1, side, side)).astype(np.float32)
    f = x.reshape(4, -1).astype(np.float64) @ w.reshape(-1)
    return linear_classifier(w, b=0.0), w, x, f


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1), b.reshape(-1)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_nes_estimates_the_margin_gradient_of_a_linear_model():
    model, w, x, f = _linear()
    y = (f > 0).astype(np.int64)  # margin = s_y - s_other = +-f: gradient +-w
    oracle = QueryCounter(model, max_queries=1000)
    oracle.start(x)
    nes = NES(eps=0.1, samples=50)
    rngs = [np.random.default_rng(i) for i in range(4)]
    grad = nes._estimate(oracle, x, y, None, np.arange(4), rngs, {})
    np.testing.assert_array_equal(oracle.counts, 100)
    for i in range(4):
        assert _cosine(grad[i], np.where(y[i] == 1, 1, -1) * w) > 0.8


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_bandit_prior_learns_the_gradient(norm):
    model, w, x, f = _linear(side=8)
    y = (f > 0).astype(np.int64)
    oracle = QueryCounter(model, max_queries=1000)
    oracle.start(x)
    bandits = Bandits(eps=0.1, norm=norm, tile_size=1)
    rngs = [np.random.default_rng(i) for i in range(4)]
    state = bandits._begin(x, rngs)
    for _ in range(100):
        direction = bandits._estimate(oracle, x, y, None, np.arange(4), rngs, state)
    np.testing.assert_array_equal(oracle.counts, 200)
    if norm == "linf":
        assert np.abs(state["prior"]).max() <= 1.0  # the exponentiated-gradient step keeps it in the box
    for i in range(4):
        # The direction estimates the margin's gradient, +w for class 1 and -w for class 0
        # (a random direction in 64 dimensions has a cosine of about +-0.125).
        assert _cosine(direction[i], np.where(y[i] == 1, 1, -1) * w) > 0.4


@pytest.mark.parametrize("factory", [
    lambda eps, q: NES(eps=eps, samples=10, max_queries=q),
    lambda eps, q: Bandits(eps=eps, tile_size=1, max_queries=q),
])
def test_descent_succeeds_above_the_optimal_linf_radius_only(factory):
    model, w, x, f = _linear()
    y = (f > 0).astype(np.int64)
    minimal = np.abs(f) / np.abs(w).sum()  # the L-inf distance to the boundary, unclipped domain
    for i in range(2):
        above = factory(1.2 * minimal[i], 600)(model, x[i : i + 1], y[i : i + 1])
        below = factory(0.9 * minimal[i], 100)(model, x[i : i + 1], y[i : i + 1])
        assert above.success[0] and not below.success[0]


def test_nes_steps_cost_two_samples_plus_one():
    model, w, x, f = _linear()
    y = (f > 0).astype(np.int64)
    tiny_eps = 1e-3  # never enough: every sample walks until its budget is too small for a step
    result = NES(eps=tiny_eps, samples=5, max_queries=60)(model, x, y)
    np.testing.assert_array_equal(result.queries, 1 + 5 * 11)  # a clean query, then 5 steps of 11; 4 left over

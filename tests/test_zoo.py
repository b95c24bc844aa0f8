"""ZOO: coordinate-wise finite differences and coordinate ADAM inside the ball."""

from __future__ import annotations

import numpy as np

from gluon_robust.attacks.zoo_attack import ZOO

from conftest import linear_classifier


def test_probes_stay_inside_the_bounds_and_the_linf_ball():
    attack = ZOO(eps=0.1, h=0.05)
    x = np.array([0.0, 0.5, 1.0, 0.5], np.float32)
    point = np.array([0.0, 0.6, 0.95, 0.42], np.float32)  # coordinate 1 sits on the ball's edge
    plus, minus = attack._probes(x, point, np.arange(4), (0.0, 1.0))
    np.testing.assert_allclose(np.diag(plus), [0.05, 0.6, 1.0, 0.47], atol=1e-7)
    np.testing.assert_allclose(np.diag(minus), [0.0, 0.55, 0.9, 0.4], atol=1e-7)
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_array_equal(plus[off], np.broadcast_to(point, (4, 4))[off])


def test_succeeds_above_the_optimal_radius_and_spends_whole_iterations_below():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 4)).astype(np.float32)
    model = linear_classifier(w, b=0.0)
    x = rng.uniform(0.3, 0.7, size=(2, 1, 4, 4)).astype(np.float32)
    f = x.reshape(2, -1).astype(np.float64) @ w.reshape(-1)
    y = (f > 0).astype(np.int64)
    minimal = np.abs(f) / np.abs(w).sum()
    for i in range(2):
        above = ZOO(eps=1.2 * minimal[i], coordinates=4, learning_rate=0.05, max_queries=500)(model, x[i : i + 1], y[i : i + 1])
        assert above.success[0]
        below = ZOO(eps=0.9 * minimal[i], coordinates=4, max_queries=100)(model, x[i : i + 1], y[i : i + 1])
        # Iterations of 1 + 2 * 4 queries: eleven of them, then the last query checks the current point.
        assert not below.success[0] and below.queries[0] == 100

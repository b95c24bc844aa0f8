"""Square Attack: the schedule, the patterns, the vertex property, and the search on closed-form models."""

from __future__ import annotations

import numpy as np
import pytest

from gluon_robust.attacks.square import SquareAttack, p_schedule, pseudo_gaussian, square_pattern

from conftest import linear_classifier


def test_p_is_halved_at_raw_iterations_as_autoattack_runs_it():
    # 0-based iterations 0..10 use p_init, 11..50 p_init / 2, ..., beyond 8000 p_init / 512 (reference p_selection).
    assert p_schedule(0.8, 0) == 0.8
    assert p_schedule(0.8, 10) == 0.8
    assert p_schedule(0.8, 11) == 0.4
    assert p_schedule(0.8, 50) == 0.4
    assert p_schedule(0.8, 51) == 0.2
    assert p_schedule(0.8, 8000) == 0.8 / 256
    assert p_schedule(0.8, 8001) == 0.8 / 512
    assert p_schedule(0.8, 999) == 0.8 / 16  # not rescaled: a 1,000-iteration run never goes below p_init / 16


def test_rescaled_schedule_stretches_to_the_budget():
    assert p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 2, 1000) == 0.4  # iteration 2 of 1,000 is iteration 20 of 10,000
    assert p_schedule(0.8, 1, 1000) == 0.8  # iteration 10 of 10,000
    assert p_schedule(0.8, 999, 1000) == 0.8 / 512


def test_pseudo_gaussian_is_nested_squares_of_unit_norm():
    pattern = pseudo_gaussian(3, 3)
    # Centre: 1 + 1/4, ring: 1/4, before normalisation.
    expected = np.full((3, 3), 0.25)
    expected[1, 1] = 1.25
    np.testing.assert_allclose(pattern, expected / np.linalg.norm(expected))
    big = pseudo_gaussian(7, 7)
    assert np.linalg.norm(big) == pytest.approx(1.0)
    assert big[3, 3] == big.max() and np.allclose(big, big.T) and np.allclose(big, big[::-1])


def test_square_pattern_has_two_halves_of_opposite_sign():
    for seed in range(6):
        pattern = square_pattern(5, np.random.default_rng(seed))
        assert np.linalg.norm(pattern) == pytest.approx(1.0)
        halves = (pattern[:2], pattern[2:]) if (pattern[:2] != 0).all() and (pattern[:2] > 0).all() else None
        if halves is None:  # transposed: left and right
            halves = (pattern[:, :2], pattern[:, 2:])
        assert (halves[0] > 0).all() and (halves[1] < 0).all()


def test_linf_points_are_vertices_of_the_eps_box(tiny_model, tiny_batch):
    x, y = tiny_batch
    result = SquareAttack(eps=0.1, max_queries=100)(tiny_model, x, y)
    low, high = np.clip(x - 0.1, 0, 1), np.clip(x + 0.1, 0, 1)
    at_vertex = np.isclose(result.x_adv, low, atol=1e-6) | np.isclose(result.x_adv, high, atol=1e-6)
    assert at_vertex.all()


@pytest.mark.parametrize("norm,optimum,slack", [("linf", "l1", 1.3), ("l2", "l2", 1.6)])
def test_finds_a_near_optimal_perturbation_of_a_linear_model(norm, optimum, slack):
    # logits [0, w.x + b]: the minimal distance to the boundary is |f(x)| / ||w||_dual, in an unclipped domain.
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 4)).astype(np.float32)
    # As in the reference code, a window of side s < 4 starts at rows/columns 0 .. 3 - s, never 4 - s: the last
    # row and column change only with the start or a whole-image square, so the model ignores them.
    w[-1, :] = 0.0
    w[:, -1] = 0.0
    model = linear_classifier(w, b=0.0)
    x = rng.normal(size=(3, 1, 4, 4)).astype(np.float32)
    f = (x.reshape(3, -1) @ w.reshape(-1)).astype(np.float64)
    y = (f > 0).astype(np.int64)
    minimal = np.abs(f) / np.linalg.norm(w.reshape(-1), ord=1 if optimum == "l1" else 2)
    for i in range(3):
        # L2 updates are 3x3-pixel patterns: on a 4x4 image they reach the optimal direction only roughly.
        above = SquareAttack(eps=slack * minimal[i], norm=norm, max_queries=2000)(model, x[i : i + 1], y[i : i + 1])
        below = SquareAttack(eps=0.9 * minimal[i], norm=norm, max_queries=200)(model, x[i : i + 1], y[i : i + 1])
        assert above.success[0] and not below.success[0]
        assert below.queries[0] == 200


def test_targeted_reaches_the_target_in_the_whole_box(tiny_model, tiny_batch):
    x, y = tiny_batch
    t = np.where(y == 5, 4, 5)
    result = SquareAttack(eps=1.0, max_queries=500)(tiny_model, x[:6], y[:6], target=t[:6])
    np.testing.assert_array_equal(result.predictions, t[:6])

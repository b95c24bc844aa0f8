"""SimBA and SimBA-DCT: the bases, the order, the one-step-per-direction rule, monotone margins."""

from __future__ import annotations

import numpy as np
import pytest

from gluon_robust.attacks.blackbox import margin
from gluon_robust.attacks.simba import SimBA, SimBADCT, dct_matrix, frequency_order

from conftest import linear_classifier


def test_the_dct_basis_is_orthonormal():
    basis = dct_matrix(7)
    np.testing.assert_allclose(basis @ basis.T, np.eye(7), atol=1e-12)
    np.testing.assert_allclose(basis[0], np.full(7, 1 / np.sqrt(7)))


def test_low_frequencies_come_first_then_wider_bands():
    order = frequency_order((2, 8, 8), first=2, stride=3, rng=np.random.default_rng(0))
    assert sorted(order) == list(range(2 * 64))
    _, rest = np.divmod(order, 64)
    u, v = np.divmod(rest, 8)
    freq = np.maximum(u, v)
    assert (freq[: 2 * 4] < 2).all()  # the 2x2 block of both channels first
    band = np.maximum(0, (freq - 2) // 3 + 1)
    assert (np.diff(band) >= 0).all()


def test_pixel_simba_moves_each_pixel_once_by_the_step(tiny_model, tiny_batch):
    x, y = tiny_batch
    result = SimBA(norm="linf", eps=0.1, max_queries=60)(tiny_model, x, y)
    delta = result.x_adv - x
    moved = np.abs(delta) > 1e-7
    at_bound = np.isclose(result.x_adv, 0.0) | np.isclose(result.x_adv, 1.0)
    assert np.all(np.isclose(np.abs(delta[moved]), 0.1, atol=1e-6) | at_bound[moved])
    assert (moved.reshape(len(x), -1).sum(axis=1) <= result.queries - 1).all()


def test_dct_steps_are_orthonormal_in_the_interior(tiny_model):
    # Away from the bounds, k accepted steps of size s make ||delta||^2 = k s^2 exactly.
    x = np.random.default_rng(0).uniform(0.4, 0.6, (6, 1, 8, 8)).astype(np.float32)
    y = tiny_model.predict(x).argmax(axis=1)
    result = SimBADCT(step_size=0.02, max_queries=50)(tiny_model, x, y)
    steps = (np.linalg.norm((result.x_adv - x).reshape(6, -1).astype(np.float64), axis=1) / 0.02) ** 2
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert (np.round(steps) >= 1).all() and (np.round(steps) <= result.queries - 1).all()


@pytest.mark.parametrize("factory", [SimBA, SimBADCT])
def test_the_margin_never_increases(factory, tiny_model, tiny_batch):
    x, y = tiny_batch
    result = factory(step_size=0.1, max_queries=40)(tiny_model, x, y)
    before = margin(tiny_model.predict(x), y, None)
    after = margin(tiny_model.predict(result.x_adv), y, None)
    assert (after <= before + 1e-6).all() and (after < before).any()


def test_candidates_that_do_not_move_are_not_queried():
    # At the lower bound x = 0 every "x - step" candidate equals x: only "x + step" is ever asked,
    # so a sample that cannot succeed spends 1 + (number of pixels) queries and stops.
    model = linear_classifier(np.ones((4, 4), np.float32), b=-100.0, bounds=(0.0, 1.0))
    x = np.zeros((2, 1, 4, 4), np.float32)
    result = SimBA(step_size=0.1, max_queries=1000)(model, x, np.zeros(2, np.int64))
    np.testing.assert_array_equal(result.queries, 1 + 16)
    np.testing.assert_allclose(result.x_adv, 0.1)  # every step raised the logit of class 1: all kept

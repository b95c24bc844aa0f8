"""Norm oracles on both backends: projection, dual norm, NumPy/NDArray agreement, steepest direction."""

from __future__ import annotations

import numpy as np
import pytest
from mxnet import nd

from gluon_robust.attacks.norms import get_norm

NAMES = ["linf", "l2", "l1"]


def _delta() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(5, 1, 4, 4)).astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_projection_lands_in_the_ball_and_is_idempotent(name: str) -> None:
    norm = get_norm(name)
    for backend in (lambda a: a, nd.array):
        p = norm.project(backend(_delta()), 0.5)
        dist = norm.distance(p)
        dist = dist if isinstance(dist, np.ndarray) else dist.asnumpy()
        assert (dist <= 0.5 + 1e-5).all()
        again = norm.project(p, 0.5)
        np.testing.assert_allclose(np.asarray(again if isinstance(again, np.ndarray) else again.asnumpy()),
                                   np.asarray(p if isinstance(p, np.ndarray) else p.asnumpy()), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_numpy_and_ndarray_agree(name: str) -> None:
    norm, d = get_norm(name), _delta()
    np.testing.assert_allclose(norm.distance(d), norm.distance(nd.array(d)).asnumpy(), rtol=1e-5)
    np.testing.assert_allclose(norm.project(d, 0.5), norm.project(nd.array(d), 0.5).asnumpy(), atol=1e-5)
    np.testing.assert_allclose(norm.direction(d), norm.direction(nd.array(d)).asnumpy(), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_dual_norm_inequality_and_steepest_direction(name: str) -> None:
    norm, g = get_norm(name), _delta().astype(np.float64)
    dual = norm.dual().distance(g)
    if name != "l1":  # L1's direction spreads over the top coordinates (Tramer & Boneh), not the exact maximiser
        np.testing.assert_allclose(norm.dual_norm(g), dual, rtol=1e-6)
    rng = np.random.default_rng(1)
    for _ in range(20):
        v = norm.project(rng.normal(size=g.shape), 1.0)
        assert ((g * v).reshape(5, -1).sum(axis=1) <= dual + 1e-9).all()


def test_unbounded_radius_is_the_old_value() -> None:
    assert get_norm("linf").unbounded_radius(2.0, 64) == 2.0 * 1.0
    assert get_norm("l2").unbounded_radius(2.0, 64.0) == 2.0 * np.sqrt(64.0)


@pytest.mark.parametrize("norm, expected", [("linf", 2.0), ("l2", 2.0 * 28.0), ("l1", 2.0 * 784), ("l0", None)])
def test_diameter_is_the_distance_between_opposite_corners(norm, expected):
    """Closed form: the corners low*1 and high*1 of a [low, high]^784 box are as far apart as any two points."""
    from gluon_robust.attacks.norms import get_norm

    measure = get_norm(norm)
    assert measure.diameter(2.0, 784) == expected
    if expected is not None:
        corner = np.full((1, 784), 2.0, np.float32)
        assert float(measure.distance(corner)[0]) == pytest.approx(expected, rel=1e-6)
    assert measure.coordinatewise == (norm == "linf")

"""Boundary Attack: the geometry of its candidates and its walk towards the closed-form boundary."""

from __future__ import annotations

import numpy as np

from gluon_robust.attacks.blackbox import CallableModel
from gluon_robust.attacks.boundary import BoundaryAttack

from conftest import linear_classifier


def test_candidates_keep_the_distance_then_shrink_it():
    attack = BoundaryAttack()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(3, 1, 6, 6)).astype(np.float32)
    current = x + rng.normal(size=x.shape).astype(np.float32)
    dist = np.linalg.norm((current - x).reshape(3, -1), axis=1)
    spherical, source = np.array([0.01, 0.1, 0.5]), np.array([0.01, 0.05, 0.2])
    rngs = [np.random.default_rng(i) for i in range(3)]
    sphere, final = attack._candidates(x, current, dist, spherical, source, rngs, -100.0, 100.0)
    sphere_dist = np.linalg.norm((sphere - x).reshape(3, -1), axis=1)
    np.testing.assert_allclose(sphere_dist, dist, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm((final - x).reshape(3, -1), axis=1), (1 - source) * dist, rtol=1e-5)
    # The orthogonal step of relative size s moves the point by r * s / sqrt(1 + s^2) * sqrt(2 + 2 / sqrt(1 + s^2))...
    # simpler: the angle it turns is atan(s).
    cos = ((sphere - x) * (current - x)).reshape(3, -1).sum(axis=1) / (sphere_dist * dist)
    np.testing.assert_allclose(np.arccos(np.clip(cos, -1, 1)), np.arctan(spherical), rtol=1e-3)


def test_walks_towards_the_minimal_distance_of_a_linear_model():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 4)).astype(np.float32)
    linear = linear_classifier(w, b=0.0, bounds=(-10.0, 10.0))
    # As a callable, so that success is the label each returned point got when it was queried: the walk
    # gets within float noise of this boundary, where a re-evaluation in another batch may flip the label.
    model = CallableModel(linear.predict, bounds=linear.bounds, num_classes=2)
    x = rng.uniform(-1, 1, size=(4, 1, 4, 4)).astype(np.float32)
    f = x.reshape(4, -1).astype(np.float64) @ w.reshape(-1)
    y = (f > 0).astype(np.int64)
    minimal = np.abs(f) / np.linalg.norm(w.reshape(-1))
    short = BoundaryAttack(max_queries=200)(model, x, y)
    long = BoundaryAttack(max_queries=2000)(model, x, y)
    assert short.success.all() and long.success.all()  # every point of the walk is adversarial
    assert (long.distance <= short.distance).all()
    assert (long.distance >= minimal * (1 - 1e-4)).all()
    assert (long.distance <= 1.3 * minimal).all(), long.distance / minimal


def test_with_eps_it_stops_once_within(tiny_model, tiny_batch):
    x, y = tiny_batch
    free = BoundaryAttack(max_queries=300)(tiny_model, x, y)
    eps = float(np.median(free.distance))
    capped = BoundaryAttack(eps=eps, max_queries=300)(tiny_model, x, y)
    reached = free.distance <= eps
    assert capped.success[reached].all() and (capped.queries[reached] < 300).all()
    assert (capped.distance <= eps + 1e-6).all()

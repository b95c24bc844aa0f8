"""Oracle tests of the projected-ascent engine (gluon_robust.attacks.engine) on closed-form objectives."""

from __future__ import annotations

from typing import Any, List, Tuple

import numpy as np
import pytest
from mxnet import nd

from gluon_robust.attacks.engine import (
    AdaptiveStep, BestPoint, FixedStep, MomentumStep, apgd_checkpoints, ascend, ball_step, best_of_restarts,
)
from gluon_robust.attacks.norms import L2Norm, LinfNorm

SHAPE = (4, 1, 3, 3)


def _linear(w: np.ndarray):
    """The gradient of ``f(x) = <w, x>`` per sample: the constant ``w``."""
    grad = nd.array(w)

    def gradient(point: nd.NDArray) -> Tuple[nd.NDArray, None]:
        return grad.broadcast_like(point), None

    return gradient


def _batch(seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    x = rng.uniform(0.3, 0.7, size=SHAPE).astype(np.float32)
    w = rng.randn(*SHAPE).astype(np.float32)
    return x, w


def test_fixed_linf_ascent_reaches_the_corner_of_the_box() -> None:
    # argmax of <w, x + d> over |d|_inf <= eps is d = eps * sign(w): 10 steps of 2.5 * eps / 10 reach it.
    x, w = _batch()
    eps = 0.1
    out = ascend(_linear(w), nd.array(x), nd.zeros(SHAPE), norm=LinfNorm(), eps=eps, steps=10,
                 rule=FixedStep(2.5 * eps / 10), bounds=(0.0, 1.0)).asnumpy()
    np.testing.assert_allclose(out, x + eps * np.sign(w), atol=1e-6)


def test_fixed_l2_ascent_reaches_the_gradient_direction_on_the_sphere() -> None:
    x, w = _batch(1)
    eps = 0.2
    out = ascend(_linear(w), nd.array(x), nd.zeros(SHAPE), norm=L2Norm(), eps=eps, steps=10,
                 rule=FixedStep(2.5 * eps / 10), bounds=(-10.0, 10.0)).asnumpy()
    unit = w / np.linalg.norm(w.reshape(len(w), -1), axis=1).reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(out, x + eps * unit, atol=1e-5)


def test_ascent_stays_in_the_bounds() -> None:
    x, w = _batch(2)
    out = ascend(_linear(w), nd.array(x), nd.zeros(SHAPE), norm=LinfNorm(), eps=0.5, steps=5,
                 rule=FixedStep(0.3), bounds=(0.25, 0.75)).asnumpy()
    assert out.min() >= 0.25 and out.max() <= 0.75
    np.testing.assert_allclose(out, np.where(w > 0, 0.75, 0.25), atol=1e-6)


def test_observer_sees_every_iterate_then_the_final_point() -> None:
    x, w = _batch(3)
    seen: List[Any] = []
    out = ascend(_linear(w), nd.array(x), nd.zeros(SHAPE), norm=LinfNorm(), eps=0.1, steps=3, rule=FixedStep(0.05),
                 bounds=(0.0, 1.0), observe=lambda point, aux: seen.append((point.asnumpy(), aux)))
    assert len(seen) == 4 and [aux is None for _, aux in seen] == [True] * 4
    np.testing.assert_array_equal(seen[0][0], x)
    np.testing.assert_array_equal(seen[-1][0], out.asnumpy())


def test_momentum_without_decay_is_the_fixed_step_in_linf() -> None:
    x, w = _batch(4)
    kwargs = dict(norm=LinfNorm(), eps=0.1, steps=4, bounds=(0.0, 1.0))
    fixed = ascend(_linear(w), nd.array(x), nd.zeros(SHAPE), rule=FixedStep(0.03), **kwargs).asnumpy()
    momentum = ascend(_linear(w), nd.array(x), nd.zeros(SHAPE), rule=MomentumStep(0.03, decay=0.0), **kwargs)
    np.testing.assert_array_equal(fixed, momentum.asnumpy())


def test_ball_step_projects_onto_the_ball() -> None:
    delta = nd.array(np.full(SHAPE, 0.09, np.float32))
    out = ball_step(LinfNorm(), delta, nd.ones(SHAPE), 0.05, 0.1).asnumpy()
    np.testing.assert_allclose(out, 0.1)


def test_best_point_is_monotone_and_keeps_the_argmax() -> None:
    rng = np.random.RandomState(5)
    points = rng.rand(6, *SHAPE).astype(np.float32)
    keys = rng.randn(6, SHAPE[0]).astype(np.float32)
    best = BestPoint(nd.zeros(SHAPE))
    previous = np.full(SHAPE[0], -np.inf)
    for point, key in zip(points, keys):
        best.offer(nd.array(point), nd.array(key))
        current = best.key.asnumpy()
        assert (current >= previous).all()
        previous = current
    winner = keys.argmax(axis=0)
    np.testing.assert_array_equal(previous, keys.max(axis=0))
    np.testing.assert_array_equal(best.x.asnumpy(), points[winner, np.arange(SHAPE[0])])


def test_restarts_keep_the_best_run_per_sample() -> None:
    rng = np.random.RandomState(6)
    runs = rng.rand(3, *SHAPE).astype(np.float32)
    scores = {float(runs[r, 0, 0, 0, 0]): rng.randn(SHAPE[0]).astype(np.float32) for r in range(3)}
    out = best_of_restarts(nd.zeros(SHAPE), 3, lambda r: nd.array(runs[r]),
                           lambda x_adv: nd.array(scores[float(x_adv.asnumpy()[0, 0, 0, 0])])).asnumpy()
    table = np.stack([scores[float(runs[r, 0, 0, 0, 0])] for r in range(3)])
    np.testing.assert_array_equal(out, runs[table.argmax(axis=0), np.arange(SHAPE[0])])


def test_apgd_step_reaches_the_linf_corner_and_never_loses_its_best() -> None:
    x, w = _batch(7)
    eps = 0.1
    xs = nd.array(x)
    wn = nd.array(w)

    def evaluate(point: nd.NDArray) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
        loss = nd.sum((point * wn).reshape((SHAPE[0], -1)), axis=1)
        return wn, loss, nd.zeros((SHAPE[0],))

    def project(point: nd.NDArray) -> nd.NDArray:
        return nd.clip(xs + LinfNorm().project(point - xs, eps), 0.0, 1.0)

    bests: List[np.ndarray] = []
    x_adv, loss_best, found = AdaptiveStep(eps=eps, steps=20).run(
        evaluate, project, LinfNorm(), xs, lambda step, *arrays: bests.append(arrays[3].asnumpy()))
    np.testing.assert_allclose(x_adv.asnumpy(), x + eps * np.sign(w), atol=1e-6)
    assert len(bests) == 21 and all((b >= a).all() for a, b in zip(bests, bests[1:]))
    assert not found.asnumpy().any()


def test_apgd_checkpoints_of_the_reference_budget() -> None:
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    with pytest.raises(Exception, match="steps"):
        apgd_checkpoints(0)

"""Tests for the EAD elastic-net attack.

Closed-form bounds on ``linear_classifier(w, b)`` (logits ``[0, w.x + b]``): the smallest L1 perturbation
that flips the decision moves the single coordinate of largest ``|w_i|`` and has L1 norm
``|f(x)| / ||w||_inf``; the minimal-L2 perturbation ``-f(x) w / ||w||_2^2`` has L1 norm
``|f(x)| ||w||_1 / ||w||_2^2``. Any adversarial point lies at or above the first; adding an L1 term to the
L2 objective can only lower the L1 norm of the answer, so EAD should lie at or below the second.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from mxnet import nd

from gluon_robust.attacks.ead import EAD, shrink
from gluon_robust.errors import ConfigError
from gluon_robust.model import Classifier
from test_cw import Batch, Recorder, linear_problem, reference_model

logger = logging.getLogger(__name__)

#: Cheap settings for the property tests.
QUICK = dict(binary_search_steps=3, steps=30)


def _l1(delta: np.ndarray) -> np.ndarray:
    return np.abs(delta.reshape(len(delta), -1)).sum(axis=1)


# ------------------------------------------------------------------ closed form
@pytest.mark.parametrize("seed", [0, 1])
def test_ead_l1_lies_between_the_l1_and_l2_optima_on_a_linear_model(seed: int) -> None:
    p = linear_problem(seed, 8, (0.2, 0.6), np.inf)
    result = EAD(steps=100)(p.model, p.x, p.y)
    assert result.success.all()
    assert (p.margins(result.x_adv) > 0).all()
    l1_optimum = p.minimal_distance(np.inf)  # |f| / ||w||_inf
    l1_of_l2_optimum = np.abs(p.f) * np.abs(p.w).sum() / (p.w @ p.w)
    ratio, ratio_l2 = result.distance / l1_optimum, l1_of_l2_optimum / l1_optimum
    logger.info("EAD L1 / minimal L1: %s (the minimal-L2 answer: %.3f)", np.round(ratio, 3), ratio_l2[0])
    assert ratio.min() >= 1 - 1e-4  # below the optimum is impossible
    assert (result.distance <= l1_of_l2_optimum * 1.01).all()
    np.testing.assert_allclose(result.distance, _l1(result.x_adv - p.x), rtol=1e-5)


def test_ead_with_a_strong_l1_weight_finds_the_sparse_optimum() -> None:
    p = linear_problem(2, 8, (0.2, 0.6), np.inf)
    result = EAD(beta=0.05, steps=100, decision_rule="l1")(p.model, p.x, p.y)
    assert result.success.all()
    ratio = result.distance / p.minimal_distance(np.inf)
    logger.info("EAD (beta=0.05, l1 rule) L1 / minimal L1: max %.4f", ratio.max())
    assert ratio.min() >= 1 - 1e-4
    assert ratio.max() <= 1.15
    # The optimum moves one coordinate, the one of largest |w_i|; EAD's answer is dominated by it.
    top = np.argmax(np.abs(p.w))
    delta = (result.x_adv - p.x).reshape(len(p.x), -1)
    assert (np.abs(delta[:, top]) >= 0.7 * result.distance).all()


def test_ead_l1_rule_never_picks_a_larger_l1_than_the_en_rule() -> None:
    # Both rules see the same iterates (the search over c does not depend on the rule); they only choose differently.
    p = linear_problem(3, 6, (0.2, 0.6), np.inf)
    by_en = EAD(beta=0.01, **QUICK)(p.model, p.x, p.y)
    by_l1 = EAD(beta=0.01, decision_rule="l1", **QUICK)(p.model, p.x, p.y)
    np.testing.assert_array_equal(by_en.success, by_l1.success)
    np.testing.assert_array_equal(by_en.iterations, by_l1.iterations)
    assert (by_l1.distance <= by_en.distance + 1e-6).all()

    def elastic(x_adv: np.ndarray) -> np.ndarray:
        delta = (x_adv - p.x).reshape(len(p.x), -1)
        return (delta**2).sum(axis=1) + 0.01 * np.abs(delta).sum(axis=1)

    assert (elastic(by_en.x_adv) <= elastic(by_l1.x_adv) + 1e-6).all()


def test_shrinkage_thresholding_operator() -> None:
    x = nd.array([[0.5, 0.5, 0.5, 0.5, 0.0, 1.0]])
    z = nd.array([[0.7, 0.55, 0.45, 0.2, -0.5, 1.5]])
    out = shrink(z, x, 0.1, 0.0, 1.0).asnumpy()
    # Moved towards x by beta; snapped to x within beta; clipped to the bounds.
    np.testing.assert_allclose(out, [[0.6, 0.5, 0.5, 0.3, 0.0, 1.0]], atol=1e-7)


# ------------------------------------------------------------------ contract
def test_ead_targeted_hits_the_target(tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    target = np.argsort(tiny_model.predict(x), axis=1)[:, -2]  # the runner-up class
    result = EAD(binary_search_steps=5, steps=50)(tiny_model, x, y, target=target)
    assert result.success.mean() >= 0.75
    np.testing.assert_array_equal(result.predictions[result.success], target[result.success])
    np.testing.assert_array_equal(result.distance[~result.success], 0.0)


def test_ead_respects_bounds_and_is_deterministic(tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    first = EAD(**QUICK)(tiny_model, x, y)
    second = EAD(**QUICK)(tiny_model, x, y)
    assert first.success.mean() > 0.5
    assert first.norm == "l1"
    assert first.x_adv.min() >= 0.0 and first.x_adv.max() <= 1.0
    np.testing.assert_array_equal(first.x_adv, second.x_adv)
    np.testing.assert_array_equal(first.iterations, second.iterations)
    assert (first.iterations > 0).all() and (first.iterations <= 3 * 30).all()
    np.testing.assert_array_equal(first.queries, 2 * first.iterations)  # a gradient and a forward pass per iteration


def test_ead_sample_alone_equals_sample_in_batch(tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    attack = EAD(**QUICK)
    batch = attack(tiny_model, x[:6], y[:6])
    for i in (1, 4):
        alone = attack(tiny_model, x[i : i + 1], y[i : i + 1])
        np.testing.assert_allclose(alone.x_adv[0], batch.x_adv[i], atol=1e-5)
        assert alone.success[0] == batch.success[i]
        assert alone.iterations[0] == batch.iterations[i]


def test_ead_more_search_steps_never_give_a_larger_perturbation(
    tiny_model: Classifier, tiny_batch: Batch
) -> None:
    x, y = tiny_batch
    short = EAD(binary_search_steps=2, steps=30)(tiny_model, x, y)
    long = EAD(binary_search_steps=4, steps=30)(tiny_model, x, y)
    assert (long.success >= short.success).all()
    both = short.success
    elastic = lambda r: ((r.x_adv - x) ** 2).reshape(len(x), -1).sum(axis=1) + 1e-3 * r.distance  # noqa: E731
    assert (elastic(long)[both] <= elastic(short)[both] + 1e-6).all()


@pytest.mark.parametrize("rule", ["en", "l1"])
def test_ead_returns_the_best_adversarial_iterate_by_its_rule(
    rule: str, tiny_model: Classifier, tiny_batch: Batch
) -> None:
    x, y = tiny_batch
    beta = 1e-3
    spy = Recorder(tiny_model, with_gradient=False)  # EAD checks its iterates with plain forward passes

    def distance(delta: np.ndarray) -> np.ndarray:
        flat = delta.reshape(len(delta), -1)
        return np.abs(flat).sum(axis=1) + (0.0 if rule == "l1" else (flat**2).sum(axis=1) / beta)

    result = EAD(beta=beta, decision_rule=rule, binary_search_steps=3, steps=30)(spy, x, y)
    best = spy.best(x, y, distance)
    assert result.success.mean() > 0.5
    np.testing.assert_array_equal(result.success, np.isfinite(best))
    np.testing.assert_allclose(distance(result.x_adv - x)[result.success], best[result.success], rtol=1e-5)


def test_ead_returns_the_clean_input_where_it_fails() -> None:
    p = linear_problem(4, 4, (0.5, 0.6), np.inf)
    result = EAD(binary_search_steps=1, steps=5, initial_const=1e-6)(p.model, p.x, p.y)
    assert not result.success.any()
    np.testing.assert_array_equal(result.x_adv, p.x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": -1e-3}, r"beta must be >= 0, got -0\.001"),
        ({"binary_search_steps": 0}, r"binary_search_steps must be an integer >= 1, got 0"),
        ({"steps": "100"}, r"steps must be an integer >= 1, got '100'"),
        ({"learning_rate": float("inf")}, r"learning_rate must be a finite number, got inf"),
        ({"initial_const": 0}, r"initial_const must be > 0, got 0"),
        ({"confidence": -1.0}, r"confidence must be >= 0, got -1\.0"),
        ({"decision_rule": "l2"}, r"decision_rule must be one of en, l1, got 'l2'"),
        ({"decision_rule": None}, r"decision_rule must be one of en, l1, got None"),
        ({"abort_early": 1}, r"abort_early must be True or False, got 1"),
        ({"eot_samples": 0}, r"eot_samples must be an integer >= 1, got 0"),
    ],
)
def test_ead_rejects_bad_hyperparameters(kwargs: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EAD(**kwargs)


def test_ead_decision_rule_is_case_insensitive() -> None:
    assert EAD(decision_rule=" L1 ").decision_rule == "l1"
    assert EAD().eps is None and EAD().norm.name == "l1"


# ------------------------------------------------------------------ reference model
@pytest.mark.slow
def test_ead_succeeds_on_every_mnist_digit(mnist_test: Batch, monkeypatch: pytest.MonkeyPatch) -> None:
    model = reference_model(monkeypatch)
    x, y = mnist_test[0][:20], mnist_test[1][:20]
    result = EAD(steps=100)(model, x, y)
    changed = (np.abs(result.x_adv - x).reshape(len(x), -1) > 1e-3).sum(axis=1)
    logger.info("EAD on 20 MNIST digits: success %.2f, median L1 %.2f, median changed pixels %d",
                result.success.mean(), np.median(result.distance), np.median(changed))
    assert result.success.all()
    assert (changed < x[0].size / 2).all()  # sparse: fewer than half the pixels move

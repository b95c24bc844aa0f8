"""JSMA: the exact L0 budget, the pair search against brute force, targeted success on a small conv net."""

from __future__ import annotations

import itertools
from typing import Dict, Optional, Tuple

import numpy as np
import pytest
from mxnet import nd

from gluon_robust.attacks import jsma as jsma_module
from gluon_robust.attacks.jsma import JSMA
from gluon_robust.errors import ConfigError
from gluon_robust.model import Classifier

Batch = Tuple[np.ndarray, np.ndarray]  # inputs and labels

FEATURES = 64  # tiny_model inputs are 1x8x8


def _points(model: Classifier, n: int, seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random inputs, the model's labels and its runner-up classes."""
    x = np.random.RandomState(seed).rand(n, 1, 8, 8).astype(np.float32)
    logits = model.predict(x)
    order = np.argsort(-logits, axis=1)
    return x, order[:, 0], order[:, 1]


def _snapshot(model: Classifier) -> Dict[str, np.ndarray]:
    return {name: p.data().asnumpy().copy() for name, p in model.collect_params().items()}


# Budgets 6, 5, 16, 3, 16 features: odd budgets with fractional theta exercise the last-change rule.
@pytest.mark.parametrize("theta, gamma", [(1.0, 0.1), (0.5, 0.08), (-1.0, 0.25), (-0.3, 0.05), (0.2, 0.25)])
def test_changes_at_most_gamma_features_in_the_theta_direction(
    theta: float, gamma: float, tiny_model: Classifier, tiny_batch: Batch
) -> None:
    x, y = tiny_batch
    result = JSMA(theta=theta, gamma=gamma)(tiny_model, x, y, target=(y + 3) % 10)
    budget = int(np.floor(gamma * FEATURES))
    changed = np.count_nonzero((result.x_adv != x).reshape(len(x), -1), axis=1)
    assert changed.max() <= budget
    assert (result.distance <= budget).all()
    delta = result.x_adv - x
    assert (delta >= 0).all() if theta > 0 else (delta <= 0).all()
    # A changed feature moved by a multiple of theta * range, or up to the bound.
    moved = delta[delta != 0]
    multiple = np.abs(moved) / abs(theta)
    at_bound = (result.x_adv[delta != 0] == (1.0 if theta > 0 else 0.0))
    assert (at_bound | (np.abs(multiple - np.round(multiple)) < 1e-4)).all()


@pytest.mark.parametrize("theta", [1.0, -1.0])
def test_saturated_features_leave_the_search_set(theta: float, tiny_model: Classifier) -> None:
    # Half of the pixels already sit at the bound the attack pushes towards.
    rng = np.random.RandomState(5)
    x = rng.rand(16, 1, 8, 8).astype(np.float32)
    x[rng.rand(*x.shape) < 0.5] = 1.0 if theta > 0 else 0.0
    y = tiny_model.predict(x).argmax(axis=1)
    result = JSMA(theta=theta, gamma=0.25)(tiny_model, x, y, target=(y + 1) % 10)
    # With |theta| = 1 every pair update saturates two fresh features: none is wasted.
    np.testing.assert_array_equal(result.distance, 2 * result.iterations)
    assert (result.iterations > 0).all()


@pytest.mark.parametrize("use_logits", [True, False])
def test_reaches_the_runner_up_target_on_most_points(use_logits: bool, tiny_model: Classifier) -> None:
    """Targeted success towards each point's runner-up class with a 30% budget.

    tiny_model has only 64 features, so gamma=0.3 allows 19 changes (the
    paper's MNIST budget is 14.5% of 784). The runner-up class is the nearest
    target. Over six random draws of 64 points, success ranged over 0.80-0.88
    (logits) and 0.88-0.98 (probabilities), while setting 18 random features
    to 1 reached the runner-up on only 0.16-0.30 of the points; 0.7 leaves
    room for the draw and still fails a broken saliency map.
    """
    x, y, runner_up = _points(tiny_model, 64, seed=0)
    result = JSMA(theta=1.0, gamma=0.3, use_logits=use_logits)(tiny_model, x, y, target=runner_up)
    assert result.success.mean() >= 0.7
    np.testing.assert_array_equal(result.predictions[result.success], runner_up[result.success])
    assert (result.distance <= 19).all()
    np.testing.assert_array_equal(result.queries, 2 * result.iterations)


def test_untargeted_random_targets_are_per_sample_and_seeded(tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    attack = JSMA(gamma=0.2, seed=7)
    batch = attack(tiny_model, x, y)
    assert batch.targets is None
    assert batch.success.mean() >= 0.5
    np.testing.assert_array_equal(batch.predictions[batch.success] != y[batch.success], True)
    again = JSMA(gamma=0.2, seed=7)(tiny_model, nd.array(x), nd.array(y))
    np.testing.assert_array_equal(batch.x_adv, again.x_adv.asnumpy())
    for i in (0, 9):
        alone = attack(tiny_model, x[i : i + 1], y[i : i + 1])
        np.testing.assert_allclose(alone.x_adv[0], batch.x_adv[i], atol=1e-5)


def test_leaves_model_parameters_alone(tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    before = _snapshot(tiny_model)
    JSMA(gamma=0.2)(tiny_model, x, y, target=(y + 1) % 10)
    after = _snapshot(tiny_model)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)


def _brute_force_pair(a: np.ndarray, b: np.ndarray, searchable: np.ndarray) -> Optional[Tuple[int, int]]:
    """The paper's pair choice for one sample by enumeration, with this module's fallback; None if no pair."""
    eligible = [(p, q) for p, q in itertools.combinations(range(len(a)), 2) if searchable[p] and searchable[q]]
    if not eligible:
        return None
    salient = [(p, q) for p, q in eligible if a[p] + a[q] > 0 and b[p] + b[q] < 0]
    if salient:
        return max(salient, key=lambda pq: -(a[pq[0]] + a[pq[1]]) * (b[pq[0]] + b[pq[1]]))
    return max(eligible, key=lambda pq: (a[pq[0]] + a[pq[1]]) - (b[pq[0]] + b[pq[1]]))


@pytest.mark.parametrize("block_elements", [1 << 24, 40])
def test_pair_search_matches_brute_force(block_elements: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsma_module, "_PAIR_BLOCK_ELEMENTS", block_elements)  # 40: one row per block
    rng = np.random.RandomState(3)
    n, d = 8, 11
    a, b = rng.randn(n, d), rng.randn(n, d)
    b[1] = np.abs(b[1]) + 0.1  # no pair hurts the other classes: fallback
    a[3] = -np.abs(a[3]) - 0.1  # no pair helps the target: fallback
    searchable = (rng.rand(n, d) < 0.7).astype(np.float64)
    searchable[2] = 0
    searchable[2, 4] = 1  # a single searchable feature: no pair
    searchable[5] = 0  # nothing searchable
    searchable[6] = 0
    searchable[6, [3, 9]] = 1  # exactly one pair
    p, q, found = JSMA._best_pairs(*(nd.array(v) for v in (a, b, searchable)))
    p, q, found = p.asnumpy().astype(int), q.asnumpy().astype(int), found.asnumpy().astype(bool)
    for i in range(n):
        expected = _brute_force_pair(a[i], b[i], searchable[i])
        assert found[i] == (expected is not None), i
        if expected is not None:
            assert tuple(sorted((p[i], q[i]))) == expected, i
    np.testing.assert_array_equal(found, [True, True, False, True, True, False, True, True])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"theta": 0}, "theta"),
        ({"theta": 1.5}, "theta"),
        ({"theta": -2.0}, "theta"),
        ({"theta": "1"}, "theta"),
        ({"theta": True}, "theta"),
        ({"gamma": 0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"gamma": float("inf")}, "gamma"),
        ({"use_logits": "yes"}, "use_logits"),
        ({"norm": "l2"}, "norm='l2'"),
    ],
)
def test_rejects_bad_hyperparameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        JSMA(**kwargs)


def test_rejects_a_budget_below_one_pair(tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    with pytest.raises(ConfigError, match="gamma=0.02 allows 1 changed feature"):
        JSMA(gamma=0.02)(tiny_model, x, y)

"""choose_targets: fixed, random and least-likely target labels."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from mxnet import nd

from gluon_robust.attacks.targets import choose_targets
from gluon_robust.errors import ConfigError
from gluon_robust.model import Classifier


@pytest.fixture
def batch64(tiny_model: Classifier) -> Any:
    x = np.random.RandomState(2).rand(64, 1, 8, 8).astype(np.float32)
    return x, tiny_model.predict(x).argmax(axis=1)


def test_random_targets_are_other_classes_in_range(tiny_model: Classifier, batch64: Any) -> None:
    x, y = batch64
    t = choose_targets(tiny_model, x, y, "random", seed=0)
    assert t.dtype == np.int64 and t.shape == y.shape
    assert np.all(t != y) and t.min() >= 0 and t.max() < 10


def test_random_targets_are_deterministic_and_batch_independent(tiny_model: Classifier, batch64: Any) -> None:
    x, y = batch64
    t = choose_targets(tiny_model, x, y, "random", seed=7)
    np.testing.assert_array_equal(choose_targets(tiny_model, x, y, "random", seed=7), t)
    assert not np.array_equal(choose_targets(tiny_model, x, y, "random", seed=8), t)
    for i in (0, 17, 63):
        assert choose_targets(tiny_model, x[i : i + 1], y[i : i + 1], "random", seed=7)[0] == t[i]
    reversed_t = choose_targets(tiny_model, x[::-1].copy(), y[::-1].copy(), "random", seed=7)
    np.testing.assert_array_equal(reversed_t[::-1], t)


def test_random_targets_cover_every_other_class(tiny_model: Classifier) -> None:
    x = np.random.RandomState(3).rand(900, 1, 8, 8).astype(np.float32)
    y = np.full(900, 4)
    counts = np.bincount(choose_targets(tiny_model, x, y, "random"), minlength=10)
    assert counts[4] == 0
    # Uniform over the 9 other classes: 100 expected each, far from 50 or 150.
    assert np.all(counts[np.arange(10) != 4] > 50) and np.all(counts < 150)


def test_least_likely_is_the_argmin_of_the_clean_logits(tiny_model: Classifier, batch64: Any) -> None:
    x, y = batch64
    t = choose_targets(tiny_model, x, y, "least-likely")
    np.testing.assert_array_equal(t, tiny_model.predict(x).argmin(axis=1))
    assert np.all(t != y)
    np.testing.assert_array_equal(choose_targets(tiny_model, x, y, "least_likely"), t)


@pytest.mark.parametrize("mode", [3, "3", " 3 ", np.int64(3)])
def test_a_label_is_used_for_every_sample(tiny_model: Classifier, batch64: Any, mode: Any) -> None:
    x, y = batch64
    np.testing.assert_array_equal(choose_targets(tiny_model, x, y, mode), np.full(len(y), 3))


def test_ndarray_inputs_are_accepted(tiny_model: Classifier, batch64: Any) -> None:
    x, y = batch64
    t = choose_targets(tiny_model, nd.array(x), nd.array(y), "random", seed=1)
    np.testing.assert_array_equal(t, choose_targets(tiny_model, x, y, "random", seed=1))


def test_a_label_equal_to_some_true_labels_warns_with_the_count(tiny_model: Classifier, batch64: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    x, y = batch64
    label = int(np.bincount(y).argmax())
    with caplog.at_level(logging.WARNING, logger="gluon_robust.attacks.targets"):
        t = choose_targets(tiny_model, x, y, label)
    np.testing.assert_array_equal(t, label)
    assert f"{int(np.sum(y == label))} of 64" in caplog.text


def test_a_label_equal_to_no_true_label_does_not_warn(tiny_model: Classifier, batch64: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    x, y = batch64
    label = int(np.setdiff1d(np.arange(10), y)[0]) if len(np.unique(y)) < 10 else None
    if label is None:
        pytest.skip("the batch covers every class")
    with caplog.at_level(logging.WARNING, logger="gluon_robust.attacks.targets"):
        choose_targets(tiny_model, x, y, label)
    assert caplog.text == ""


@pytest.mark.parametrize("mode,match", [
    ("foo", r"'foo'.*'random', 'least-likely' or a class label in \[0, 9\]"),
    (10, r"10.*\[0, 9\]"),
    ("12", r"'12'.*\[0, 9\]"),
    (-1, r"-1.*\[0, 9\]"),
    (True, r"True.*random"),
    (None, r"None.*random"),
    (2.5, r"2\.5.*random"),
])
def test_bad_modes_raise_config_error_listing_the_choices(tiny_model: Classifier, batch64: Any, mode: Any,
                                                          match: str) -> None:
    x, y = batch64
    with pytest.raises(ConfigError, match=match):
        choose_targets(tiny_model, x, y, mode)

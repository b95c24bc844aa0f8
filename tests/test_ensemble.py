"""Ensembles: each combination rule against a NumPy reference, the BPDA gradient of the vote, member checks."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, nd

from conftest import linear_classifier, tiny_bn_net
from gluon_robust.attacks import PGD
from gluon_robust.attacks.base import input_gradient
from gluon_robust.attacks.losses import cross_entropy
from gluon_robust.defenses.ensemble import Ensemble
from gluon_robust.errors import ConfigError
from gluon_robust.model import load_classifier


def _member(seed: int, **kwargs):
    options = dict(input_size=(1, 8, 8), mean=0.5, std=0.25)
    options.update(kwargs)
    return load_classifier(tiny_bn_net(seed=seed, classes=options.pop("classes", 10)), **options)


@pytest.fixture(scope="module")
def members():
    return [_member(seed) for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def batch():
    return np.random.RandomState(4).rand(64, 1, 8, 8).astype(np.float32)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _with_size(model, size):
    model.input_size = size
    return model


def test_an_ensemble_of_identical_members_is_the_member(members, batch):
    member = members[0]
    logits = member.predict(batch)
    log_probs = np.log(_softmax(logits))
    np.testing.assert_allclose(Ensemble([member, member], mode="logits").predict(batch), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Ensemble([member, member, member], mode="probs").predict(batch), log_probs,
                               rtol=1e-4, atol=1e-5)
    votes = Ensemble([member, member], mode="vote").predict(batch)
    np.testing.assert_array_equal(votes.argmax(axis=1), logits.argmax(axis=1))
    assert np.all(votes.max(axis=1) >= 2.0)  # both votes for the member's class


def test_logits_and_probs_modes_average_as_documented(members, batch):
    outs = np.stack([m.predict(batch) for m in members])
    np.testing.assert_allclose(Ensemble(members, mode="logits").predict(batch), outs.mean(axis=0), rtol=1e-5, atol=1e-5)
    probs = Ensemble(members, mode="probs").predict(batch)
    np.testing.assert_allclose(np.exp(probs), np.stack([_softmax(o) for o in outs]).mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.exp(probs).sum(axis=1), 1.0, rtol=1e-5)  # log-probabilities, not probabilities


def test_vote_is_the_majority_with_ties_broken_by_the_mean_probability(members, batch):
    outs = np.stack([m.predict(batch) for m in members])
    counts = np.stack([np.bincount(row, minlength=10) for row in outs.argmax(axis=2).T])
    mean_probs = np.stack([_softmax(o) for o in outs]).mean(axis=0)
    scores = Ensemble(members, mode="vote").predict(batch)
    np.testing.assert_array_equal(np.floor(scores + 1e-6), counts)
    winners = scores.argmax(axis=1)
    majority = counts.max(axis=1) >= 2
    assert majority.any() and (~majority).any()  # both cases occur on this batch
    np.testing.assert_array_equal(winners[majority], counts.argmax(axis=1)[majority])
    tied = np.where(counts == counts.max(axis=1, keepdims=True), mean_probs, -1.0)
    np.testing.assert_array_equal(winners[~majority], tied.argmax(axis=1)[~majority])


def test_vote_gradient_is_the_mean_logit_gradient_bpda(members, batch):
    """d CE(vote)/dx = J_mean_logits(x)^T (softmax(scores) - onehot(y)): the identity backward of the vote."""
    ensemble = Ensemble(members, mode="vote")
    x, y = nd.array(batch[:8]), nd.array(np.arange(8) % 10)
    grad, _, _ = input_gradient(ensemble, x, y, None, cross_entropy)
    scores = ensemble.predict(batch[:8])
    head = _softmax(scores) - np.eye(10)[np.arange(8) % 10]
    xv = x.copy()
    xv.attach_grad()
    with autograd.record(train_mode=ensemble.mode_free):
        mean_logits = Ensemble(members, mode="logits")(xv)
    mean_logits.backward(nd.array(head))
    np.testing.assert_allclose(grad.asnumpy(), xv.grad.asnumpy(), rtol=1e-4, atol=1e-6)
    assert np.abs(grad.asnumpy()).max() > 0
    assert ensemble.gradient == "bpda" and Ensemble(members).gradient == "exact"


def test_pgd_on_the_logit_ensemble_follows_the_linear_closed_form():
    """Two linear members average to a linear model; L2 PGD needs exactly |f(x)| / ||w|| to flip it."""
    w1, w2 = np.array([1.0, 2.0, 0.0, 2.0]), np.array([3.0, 0.0, 4.0, 0.0])
    ensemble = Ensemble([linear_classifier(w1, 0.5), linear_classifier(w2, -0.5)], mode="logits")
    w = (w1 + w2) / 2
    x = np.zeros((4, 1, 1, 4), np.float32)
    x[:, 0, 0, 0] = [0.6, 0.9, -0.7, 1.2]
    logit = x.reshape(4, -1) @ w
    y = (logit > 0).astype(np.int64)
    distance = np.abs(logit) / np.linalg.norm(w)
    for eps, flipped in ((0.95, False), (1.05, True)):
        result = PGD(eps=float(eps * distance.min()), norm="l2", steps=30, loss="margin")(ensemble, x[:1], y[:1])
        assert bool(result.success[0]) == flipped


def test_attributes_come_from_the_members(members):
    ensemble = Ensemble(members, mode="probs")
    assert ensemble.bounds == (0.0, 1.0) and ensemble.num_classes == 10 and ensemble.input_size == (1, 8, 8)
    assert ensemble.ctx == mx.cpu() and ensemble.folded and ensemble.mode_free == all(m.mode_free for m in members)
    assert len(ensemble) == 3 and "ensemble of 3 (probs" in ensemble.describe()
    assert len(ensemble.collect_params().keys()) == sum(len(m.collect_params().keys()) for m in members)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"classes": 5}, "member 1 has 5 classes, member 0 has 10"),
    ({"bounds": (-1.0, 1.0)}, r"member 1 has bounds \(-1.0, 1.0\)"),
])
def test_members_that_disagree_are_a_config_error(members, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        Ensemble([members[0], _member(1, **kwargs)])


def test_bad_ensembles_are_config_errors(members):
    with pytest.raises(ConfigError, match="member 1 takes inputs"):
        Ensemble([members[0], _with_size(_member(1), (1, 9, 9))])
    with pytest.raises(ConfigError, match="mode must be one of logits, probs, vote, got 'mean'"):
        Ensemble(members, mode="mean")
    with pytest.raises(ConfigError, match="at least one member"):
        Ensemble([])


def test_from_sources_loads_each_member_like_load_classifier(members, batch):
    ensemble = Ensemble.from_sources([tiny_bn_net(seed=0), tiny_bn_net(seed=1)], mode="logits",
                                     input_size=(1, 8, 8), mean=0.5, std=0.25)
    expected = (members[0].predict(batch) + members[1].predict(batch)) / 2
    np.testing.assert_allclose(ensemble.predict(batch), expected, rtol=1e-5, atol=1e-5)

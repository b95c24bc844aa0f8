"""Training helpers: each lowers its own objective, touches parameters only through trainer.step, keeps its contract."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from gluon_robust.errors import ConfigError, DataError
from gluon_robust.folding import fold_batchnorm
from gluon_robust.training import (
    FastAT, FreeAT, InputGradientRegularization, MART, PGDAT, Standard, TRADES, Distillation, get_method, make_method,
    method_names,
)
from gluon_robust.training.adversarial import cross_entropy, kl_divergence
from training_helpers import stats, tiny_data, trainable, training_model, values

X, Y = tiny_data()


def _methods():
    teacher = training_model(bn=False, seed=3)
    return {
        "pgd-at": lambda: PGDAT(eps=0.1, steps=3),
        "pgd-at-mix": lambda: PGDAT(eps=0.1, steps=3, mix=0.5),
        "pgd-at-eval-bn": lambda: PGDAT(eps=0.1, steps=3, attack_bn="eval"),
        "fast-at": lambda: FastAT(eps=0.1),
        "free-at": lambda: FreeAT(eps=0.1, replays=2),
        "trades": lambda: TRADES(eps=0.1, steps=3),
        "mart": lambda: MART(eps=0.1, steps=3),
        "input-grad": lambda: InputGradientRegularization(weight=1.0),
        "distill": lambda: Distillation(teacher=teacher, temperature=10.0),
        "standard": lambda: Standard(),
    }


METHODS = _methods()


def _objective(method, model, x, y) -> float:
    """The method's own objective at the current weights, with its random draws fixed."""
    state = method.state_dict()
    with autograd.record():
        value = method(model, x, y).mean()
    method.load_state_dict(state)
    return float(value.asscalar())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_step_lowers_the_objective(name):
    model = training_model()
    method = METHODS[name]()
    trainer = gluon.Trainer(model.net.collect_params(), "sgd", {"learning_rate": 0.05})
    x, y = nd.array(X), nd.array(Y)
    before = _objective(method, model, x, y)
    state = method.state_dict()
    with autograd.record():
        loss = method(model, x, y)
    loss.backward()
    trainer.step(len(Y))
    method.load_state_dict(state)
    after = _objective(method, model, x, y)
    assert np.isfinite(before) and after < before


@pytest.mark.parametrize("name", sorted(METHODS))
def test_parameters_change_only_through_trainer_step(name):
    """The helper's loss (and its backward) leaves the trainable weights alone; the attack leaves the statistics."""
    model, twin = training_model(), training_model()
    method = METHODS[name]()
    x, y = nd.array(X), nd.array(Y)
    weights, running = values(trainable(model)), values(stats(model))
    with autograd.record():
        loss = method(model, x, y)
    for key, value in values(trainable(model)).items():
        np.testing.assert_array_equal(value, weights[key])
    for key, value in values(stats(model)).items():
        np.testing.assert_array_equal(value, running[key])  # MXNet updates statistics in backward only
    loss.backward()
    for key, value in values(trainable(model)).items():
        np.testing.assert_array_equal(value, weights[key])
    # The statistics move exactly as in a plain loop running only the method's training forwards
    # on the same adversarial batch: the attack's own passes left no trace.
    if name in ("input-grad", "distill", "standard", "free-at"):
        return
    x_adv = method.perturb(training_model(), x, y)  # the same attack, on a third copy
    method.perturb = lambda *_: x_adv  # the twin runs the training forwards alone
    with autograd.record():
        loss = method(twin, x, y)
    loss.backward()
    for key, value in values(stats(twin)).items():
        moved = values(stats(model))[key]
        np.testing.assert_allclose(moved, value, rtol=1e-5, atol=1e-6)


def test_attack_updates_stats_option_lets_the_attack_move_them():
    model = training_model()
    running = values(stats(model))
    method = PGDAT(eps=0.1, steps=3, attack_updates_stats=True)
    method.perturb(model, nd.array(X), nd.array(Y))
    moved = values(stats(model))
    assert any(not np.array_equal(moved[k], running[k]) for k in running)
    model = training_model()
    PGDAT(eps=0.1, steps=3).perturb(model, nd.array(X), nd.array(Y))
    assert all(np.array_equal(values(stats(model))[k], running[k]) for k in running)


@pytest.mark.parametrize("attack_bn", ["train", "eval"])
def test_pgd_at_example_lies_in_ball_and_bounds_and_raises_the_loss(attack_bn):
    model = training_model()
    method = PGDAT(eps=0.1, steps=5, attack_bn=attack_bn)
    x, y = nd.array(X), nd.array(Y)
    x_adv = method.perturb(model, x, y).asnumpy()
    assert np.abs(x_adv - X).max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with autograd.pause(train_mode=attack_bn == "train"):
        clean = cross_entropy(model(x), y).mean().asscalar()
        adv = cross_entropy(model(nd.array(x_adv)), y).mean().asscalar()
    assert adv > clean


def test_eval_bn_attack_differentiates_the_current_eval_mode_function():
    """attack_bn='eval' attacks a mirror equal to the folded model, refreshed after every step."""
    model = training_model()
    method = PGDAT(eps=0.1, steps=1, attack_bn="eval")
    x, y = nd.array(X), nd.array(Y)
    trainer = gluon.Trainer(model.net.collect_params(), "sgd", {"learning_rate": 0.5})
    for _ in range(2):
        with autograd.record():
            loss = method(model, x, y)
        loss.backward()
        trainer.step(len(Y))
    method.perturb(model, x, y)  # refreshes the mirror
    mirror = next(iter(method._mirrors.values())).get(mx.cpu(), x.shape)
    folded = fold_batchnorm(model.net, input_shape=(1, 1, 8, 8))
    with autograd.pause():
        expected = folded((x - 0.5) / 0.25).asnumpy()
        np.testing.assert_allclose(mirror(x).asnumpy(), expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(model(x).asnumpy(), expected, rtol=1e-4, atol=1e-4)


def test_mixing_ratio_endpoints():
    model = training_model(bn=False)
    x, y = nd.array(X), nd.array(Y)
    with autograd.pause():
        clean = cross_entropy(model(x), y).asnumpy()
        np.testing.assert_allclose(PGDAT(eps=0.1, mix=1.0)(model, x, y).asnumpy(), clean, rtol=1e-6)
        np.testing.assert_allclose(TRADES(eps=0.1, beta=0.0)(model, x, y).asnumpy(), clean, rtol=1e-6)
        half = PGDAT(eps=0.1, steps=2, mix=0.5, seed=4)
        x_adv = PGDAT(eps=0.1, steps=2, seed=4).perturb(model, x, y)
        adv = cross_entropy(model(x_adv), y).asnumpy()
        np.testing.assert_allclose(half(model, x, y).asnumpy(), 0.5 * clean + 0.5 * adv, rtol=1e-5)


def test_trades_and_mart_losses_match_their_formulas():
    model = training_model(bn=False)
    x, y = nd.array(X), nd.array(Y)
    with autograd.pause():
        trades = TRADES(eps=0.1, steps=2, beta=3.0, seed=2)
        x_adv = TRADES(eps=0.1, steps=2, beta=3.0, seed=2).perturb(model, x, y)
        clean, adv = model(x), model(x_adv)
        expected = cross_entropy(clean, y) + 3.0 * kl_divergence(clean, adv)
        np.testing.assert_allclose(trades(model, x, y).asnumpy(), expected.asnumpy(), rtol=1e-5)
        mart = MART(eps=0.1, steps=2, beta=5.0, seed=2)
        x_adv = MART(eps=0.1, steps=2, beta=5.0, seed=2).perturb(model, x, y)
        p_adv = nd.softmax(model(x_adv)).asnumpy()
        p_nat = nd.softmax(model(x)).asnumpy()
        yi = Y.astype(int)
        rows = np.arange(len(yi))
        other = p_adv.copy()
        other[rows, yi] = 0
        bce = -np.log(p_adv[rows, yi]) - np.log(1.0001 - other.max(axis=1))
        kl = (p_nat * (np.log(p_nat) - np.log(p_adv))).sum(axis=1)
        np.testing.assert_allclose(mart(model, x, y).asnumpy(), bce + 5.0 * kl * (1 - p_nat[rows, yi]), rtol=1e-4)


def test_hybridised_and_imperative_gradients_agree_for_two_forward_methods():
    """Several recorded calls of one static_alloc graph keep their own activations."""
    grads = []
    for hybridize in (False, True):
        model = training_model(hybridize=hybridize)
        with autograd.record():
            loss = TRADES(eps=0.1, steps=2, seed=1)(model, nd.array(X), nd.array(Y))
        loss.backward()
        grads.append(np.concatenate([p.grad().asnumpy().ravel() for p in trainable(model).values()]))
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_random_start_depends_on_the_sample_not_the_shard():
    """Splitting a batch over shards draws the same random starts, so ctx lists match one context."""
    model = training_model(bn=False)
    x, y = nd.array(X), nd.array(Y)
    whole = PGDAT(eps=0.1, steps=2, seed=5).perturb(model, x, y).asnumpy()
    method = PGDAT(eps=0.1, steps=2, seed=5)
    method._calls = {}
    parts = []
    for lo, hi in ((0, 7), (7, 16)):
        method._call_index = 0
        parts.append(method.perturb(model, x[lo:hi], y[lo:hi]).asnumpy())
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-5, atol=1e-6)


def test_free_at_updates_its_perturbation_from_the_users_backward():
    model = training_model(bn=False)
    method = FreeAT(eps=0.1, replays=3)
    x, y = nd.array(X), nd.array(Y)
    with autograd.record():
        loss = method(model, x, y)
    np.testing.assert_array_equal(method.perturb(model, x, y).asnumpy(), X)  # no backward yet: delta stays 0
    with autograd.record():
        loss = method(model, x, y)
    loss.backward()
    delta = method.perturb(model, x, y).asnumpy() - X
    assert np.abs(delta).max() <= 0.1 + 1e-6 and np.abs(delta).max() > 0.05
    with autograd.pause():
        adv = cross_entropy(model(nd.array(X + delta)), y).mean().asscalar()
        clean = cross_entropy(model(x), y).mean().asscalar()
    assert adv > clean
    state = method.state_dict()
    assert set(state["delta"]) == {"cpu(0)"}
    smaller = method.perturb(model, x[:5], y[:5]).asnumpy()  # a short batch uses the first rows
    np.testing.assert_allclose(smaller - X[:5], delta[:5], atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 5.0, 20.0, 100.0])
def test_distillation_at_several_temperatures(temperature):
    """A student equal to its teacher has zero gradient; a different one learns towards the soft labels."""
    teacher = training_model(bn=False, seed=3)
    student = training_model(bn=False, seed=3)
    method = Distillation(teacher=teacher, temperature=temperature)
    x, y = nd.array(X), nd.array(Y)
    with autograd.record():
        loss = method(student, x, y)
    loss.backward()
    largest = max(float(nd.abs(p.grad()).max().asscalar()) for p in trainable(student).values())
    assert largest < 1e-5
    soft = method.soft_labels(x).asnumpy()
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
    sharp = Distillation(teacher=teacher, temperature=1.0).soft_labels(x).asnumpy()
    assert temperature == 1.0 or soft.max(axis=1).mean() < sharp.max(axis=1).mean()
    other = training_model(bn=False, seed=7)
    trainer = gluon.Trainer(other.net.collect_params(), "adam", {"learning_rate": 0.01})
    before = _objective(method, other, x, y)
    for _ in range(3):
        with autograd.record():
            loss = method(other, x, y)
        loss.backward()
        trainer.step(len(Y))
    assert _objective(method, other, x, y) < before


def test_registry_and_validation_errors():
    assert {"pgd-at", "fast-at", "free-at", "trades", "mart", "distill", "input-grad", "standard"} <= set(method_names())
    assert isinstance(get_method("madry", eps=0.3), PGDAT)
    with pytest.raises(ConfigError, match="unknown training method 'trade'.*did you mean trades"):
        get_method("trade", eps=0.3)
    with pytest.raises(ConfigError, match="trades does not take replays; it accepts"):
        make_method("trades", {"eps": 0.3, "replays": 4})
    cases = [
        (lambda: PGDAT(eps=-0.1), "eps must be >= 0, got -0.1"),
        (lambda: PGDAT(eps=0.1, steps=0), "steps must be an integer >= 1, got 0"),
        (lambda: PGDAT(eps=0.1, mix=1.5), r"mix must be <= 1.0, got 1.5"),
        (lambda: PGDAT(eps=0.1, attack_bn="frozen"), "attack_bn must be one of train, eval, got 'frozen'"),
        (lambda: PGDAT(eps=0.1, norm="l0"), "pgd-at supports norms linf, l2; got norm='l0'"),
        (lambda: FreeAT(eps=0.1, replays=0), "replays must be an integer >= 1, got 0"),
        (lambda: TRADES(eps=0.1, beta=float("nan")), "beta must be a finite number, got nan"),
        (lambda: Distillation(teacher="t.yaml"), "teacher must be a Gluon block"),
        (lambda: Distillation(teacher=training_model(), temperature=0), "temperature must be > 0, got 0"),
        (lambda: Standard(seed=-1), "seed must be a non-negative integer, got -1"),
    ]
    for build, message in cases:
        with pytest.raises(ConfigError, match=message):
            build()
    method = PGDAT(eps=0.1)
    with pytest.raises(DataError, match="y must have shape"):
        method(training_model(), nd.array(X), nd.array(Y[:3]))
    with pytest.raises(DataError, match="x must be an mxnet NDArray"):
        method(training_model(), X, Y)
    with pytest.raises(ConfigError, match="eps must be >= 0"):
        method.set_budget(eps=-1.0)

"""Transfer attack: MI-FGSM with input diversity on surrogates, one query to the target."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

from gluon_robust.attacks.base import input_gradient
from gluon_robust.attacks.losses import cross_entropy
from gluon_robust.attacks.mifgsm import MIFGSM
from gluon_robust.attacks.transfer import TransferAttack, diverse_inputs
from gluon_robust.errors import ConfigError

from conftest import linear_classifier


def test_without_diversity_on_the_target_itself_it_is_mifgsm(tiny_model, tiny_batch):
    x, y = tiny_batch
    transfer = TransferAttack(surrogate=tiny_model, eps=0.1, steps=5, diversity_prob=0.0)(tiny_model, x, y)
    white_box = MIFGSM(eps=0.1, steps=5)(tiny_model, x, y)
    np.testing.assert_array_equal(transfer.x_adv, white_box.x_adv)
    np.testing.assert_array_equal(transfer.queries, 1)


def test_an_ensemble_averages_logits(tiny_model, tiny_batch):
    x, y = tiny_batch
    one = TransferAttack(surrogate=tiny_model, eps=0.1, steps=3, seed=1)(tiny_model, x, y)
    two = TransferAttack(surrogate=[tiny_model, tiny_model], eps=0.1, steps=3, seed=1)(tiny_model, x, y)
    np.testing.assert_allclose(one.x_adv, two.x_adv, atol=1e-6)


def test_diverse_inputs_resize_and_pad_differentiably(tiny_model, tiny_batch):
    x = mx.nd.array(tiny_batch[0][:4])
    rngs = [np.random.default_rng(i) for i in range(4)]
    same = diverse_inputs(x, rngs, prob=0.0, resize_rate=1.5).asnumpy()
    np.testing.assert_allclose(same, x.asnumpy(), atol=1e-5)
    shrunk = diverse_inputs(x, rngs, prob=1.0, resize_rate=1.5).asnumpy()
    assert shrunk.shape == x.shape
    # Every sample is shrunk onto a zero canvas: some border row or column is all zeros.
    border = np.stack([shrunk[:, 0, 0], shrunk[:, 0, -1], shrunk[:, 0, :, 0], shrunk[:, 0, :, -1]], axis=1)
    assert (np.abs(border).max(axis=2) < 1e-6).any(axis=1).all()

    class Diverse:
        mode_free = tiny_model.mode_free

        def __call__(self, z):
            return tiny_model(diverse_inputs(z, [np.random.default_rng(i) for i in range(4)], 1.0, 1.5))

    y = mx.nd.array(tiny_batch[1][:4])
    grad, _, _ = input_gradient(Diverse(), x, y, None, cross_entropy)
    plain, _, _ = input_gradient(tiny_model, x, y, None, cross_entropy)
    assert np.abs(grad.asnumpy()).sum(axis=(1, 2, 3)).min() > 0
    assert not np.allclose(grad.asnumpy(), plain.asnumpy())


def test_transfer_follows_the_surrogates_agreement_with_the_target():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 4)).astype(np.float32)
    target = linear_classifier(w, b=0.0, bounds=(-10.0, 10.0))
    close = linear_classifier(w + 0.2 * rng.normal(size=w.shape).astype(np.float32), b=0.0, bounds=(-10.0, 10.0))
    opposite = linear_classifier(-w, b=0.0, bounds=(-10.0, 10.0))
    x = rng.uniform(-1, 1, size=(32, 1, 4, 4)).astype(np.float32)
    f = x.reshape(32, -1).astype(np.float64) @ w.reshape(-1)
    y = (f > 0).astype(np.int64)
    eps = float(1.5 * np.max(np.abs(f) / np.abs(w).sum()))
    assert TransferAttack(surrogate=close, eps=eps, diversity_prob=0.0)(target, x, y).success_rate > 0.9
    assert TransferAttack(surrogate=opposite, eps=eps, diversity_prob=0.0)(target, x, y).success_rate == 0.0


def test_a_surrogate_by_config_name():
    attack = TransferAttack(surrogate="mnist_resnet20", eps=0.3)
    assert len(attack.surrogate) == 1 and attack.surrogate[0].num_classes == 10
    assert "surrogate=['cifar_resnet20_v1']" in repr(attack)  # names, not whole networks


@pytest.mark.parametrize("kwargs,match", [
    ({"surrogate": []}, "at least one model"),
    ({"surrogate": 3}, "surrogate must be a model.*int"),
    ({"diversity_prob": 1.5}, "diversity_prob must be <= 1.0, got 1.5"),
    ({"resize_rate": 0.9}, "resize_rate must be >= 1, got 0.9"),
    ({"decay": -1}, "decay must be >= 0, got -1"),
    ({"steps": 0}, "steps must be an integer >= 1, got 0"),
    ({"loss": "hinge"}, "unknown loss 'hinge'"),
])
def test_bad_hyperparameters_raise_config_error(kwargs, match, tiny_model):
    params = dict({"surrogate": tiny_model, "eps": 0.1}, **kwargs)
    with pytest.raises(ConfigError, match=match):
        TransferAttack(**params)

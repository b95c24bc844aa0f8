"""BatchNorm during training: where MXNet 1.9.1 updates running statistics, and the tools that control it."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, nd

from gluon_robust.errors import ConfigError
from gluon_robust.training.batchnorm import preserve_running_stats, recalibrate_batchnorm, running_stats
from training_helpers import stats, tiny_data, training_model, values

X, Y = tiny_data()


def _moved(model, before) -> bool:
    after = values(stats(model))
    return any(not np.array_equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("hybridize", [False, True])
def test_mxnet_updates_running_stats_in_backward_not_forward(hybridize):
    """The finding behind the snapshot/restore design (CPU, MKLDNN, MXNet 1.9.1)."""
    model = training_model(hybridize=hybridize)
    x = nd.array(X)
    before = values(stats(model))
    for scope in (lambda: autograd.record(train_mode=True), lambda: autograd.train_mode(),
                  lambda: autograd.pause(train_mode=True), lambda: autograd.record(train_mode=False)):
        with scope():
            model(x).wait_to_read()
        assert not _moved(model, before)
    xv = x.copy()
    xv.attach_grad()
    with autograd.record(train_mode=True):
        out = model(xv)
    (grad,) = autograd.grad(out, [xv])
    grad.wait_to_read()
    assert _moved(model, before)  # an input-only gradient updates them too


def test_preserve_running_stats_undoes_an_attack_backward():
    model = training_model()
    before = values(stats(model))
    assert {p.name for p in running_stats(model)} == {p.name for p in stats(model).values()}
    with preserve_running_stats(model, mx.cpu()):
        for _ in range(3):
            xv = nd.array(X)
            xv.attach_grad()
            with autograd.record(train_mode=True):
                out = model(xv)
            autograd.grad(out, [xv])[0].wait_to_read()
    assert not _moved(model, before)
    with preserve_running_stats(model, mx.cpu(), enabled=False):
        xv = nd.array(X)
        xv.attach_grad()
        with autograd.record(train_mode=True):
            out = model(xv)
        autograd.grad(out, [xv])[0].wait_to_read()
    assert _moved(model, before)


def test_recalibrate_batchnorm_sets_the_mean_of_clean_batch_statistics():
    model = training_model()
    batches = [X[:8], X[8:]]
    assert recalibrate_batchnorm(model, batches) == 2
    net = model.net
    with autograd.pause(train_mode=True):
        means, variances = [], []
        for batch in batches:
            h = net[0]((nd.array(batch) - 0.5) / 0.25).asnumpy()  # input of the first BatchNorm
            means.append(h.mean(axis=(0, 2, 3)))
            variances.append(h.var(axis=(0, 2, 3)))
    first = stats(model)
    np.testing.assert_allclose(first["1.running_mean"].data().asnumpy(), np.mean(means, axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(first["1.running_var"].data().asnumpy(), np.mean(variances, axis=0), rtol=1e-4, atol=1e-5)
    assert model._active  # hybridised again
    with pytest.raises(ConfigError, match="at least one batch"):
        recalibrate_batchnorm(model, [])
    assert recalibrate_batchnorm(training_model(bn=False), [X]) == 0

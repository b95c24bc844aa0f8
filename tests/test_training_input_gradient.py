"""Input-gradient regularisation, and what MXNet 1.9.1 can (and cannot) differentiate twice."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from gluon_robust.errors import ConfigError
from gluon_robust.training import InputGradientRegularization
from gluon_robust.training.adversarial import cross_entropy
from gluon_robust.training.input_gradient_reg import input_gradient_penalty
from training_helpers import tiny_data, training_model

X, Y = tiny_data()


def _second_order(op, x_shape=(2, 16)):
    """Run a double backward through ``op``; return None or the name of the refusing operator."""
    x = nd.random.uniform(0.1, 1, shape=x_shape)
    x.attach_grad()
    try:
        with autograd.record():
            out = op(nd.square(x))
            (g,) = autograd.grad(out, [x], head_grads=nd.ones_like(out), create_graph=True, retain_graph=True)
            pen = nd.square(g)
        pen.backward(nd.ones_like(pen))
        return None
    except mx.base.MXNetError as err:
        return [line for line in str(err).splitlines() if line.strip()][-1]


W = nd.random.normal(shape=(16, 16))
SUPPORTED = {
    "FullyConnected": lambda h: nd.FullyConnected(h, W, num_hidden=16, no_bias=True),
    "relu": nd.relu, "tanh": nd.tanh, "sigmoid": nd.sigmoid, "exp": nd.exp, "log": nd.log, "sqrt": nd.sqrt,
    "elemwise_add": lambda h: nd.elemwise_add(h, h),
}
UNSUPPORTED = {
    "_backward_Convolution": (lambda h: nd.Convolution(h, nd.ones((2, 1, 3, 3)), kernel=(3, 3), num_filter=2,
                                                       no_bias=True), (2, 1, 4, 4)),
    "_backward_Pooling": (lambda h: nd.Pooling(h, kernel=(2, 2), pool_type="max", stride=(2, 2)), (2, 1, 4, 4)),
    "_backward_BatchNorm": (lambda h: nd.BatchNorm(h, nd.ones(16), nd.zeros(16), nd.zeros(16), nd.ones(16)), (2, 16)),
    "_backward_Activation": (lambda h: nd.Activation(h, act_type="relu"), (2, 16)),
    "_backward_log_softmax": (lambda h: nd.log_softmax(h), (2, 16)),
    "_backward_sum": (lambda h: nd.sum(nd.exp(h), axis=1), (2, 16)),
    "_backward_broadcast_sub": (lambda h: nd.broadcast_sub(h, nd.ones((1, 16))), (2, 16)),
    "_backward_mul": (lambda h: nd.elemwise_mul(h, h), (2, 16)),
}


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_mxnet_second_order_support(name):
    assert _second_order(SUPPORTED[name]) is None


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_mxnet_second_order_refusals(name):
    op, shape = UNSUPPORTED[name]
    assert f"Operator {name} is non-differentiable" in (_second_order(op, shape) or "")


def test_mxnet_fully_connected_second_order_gradient_is_wrong():
    """MXNet 1.9.1 registers one, but it ignores that the incoming gradient depends on the input."""
    rng = np.random.RandomState(0)
    x0 = rng.uniform(0.2, 1.0, size=(3, 5))
    w = nd.array(rng.normal(size=(2, 5)))

    def penalty_grad(op, x_np):
        x = nd.array(x_np)
        x.attach_grad()
        with autograd.record():
            out = op(x)
            (g,) = autograd.grad(out, [x], head_grads=nd.ones_like(out), create_graph=True, retain_graph=True)
            pen = nd.square(g)
        pen.backward(nd.ones_like(pen))
        return x.grad.asnumpy()

    def penalty(op, x_np):
        x = nd.array(x_np)
        x.attach_grad()
        with autograd.record():
            out = op(x)
        (g,) = autograd.grad(out, [x], head_grads=nd.ones_like(out))
        return float((g.asnumpy().astype(np.float64) ** 2).sum())

    def numeric(op):
        grad = np.zeros_like(x0)
        for idx in np.ndindex(x0.shape):
            up, down = x0.copy(), x0.copy()
            up[idx] += 1e-3
            down[idx] -= 1e-3
            grad[idx] = (penalty(op, up) - penalty(op, down)) / 2e-3
        return grad

    right = lambda x: nd.tanh(nd.tanh(x))  # noqa: E731 -- unary ops are right
    np.testing.assert_allclose(penalty_grad(right, x0), numeric(right), atol=1e-3)
    wrong = lambda x: nd.tanh(nd.FullyConnected(x, w, num_hidden=2, no_bias=True))  # noqa: E731
    assert np.abs(penalty_grad(wrong, x0) - numeric(wrong)).max() > 0.1 * np.abs(numeric(wrong)).max()


class TinyMLP(gluon.HybridBlock):
    """A two-layer perceptron on raw inputs."""

    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.hidden = gluon.nn.Dense(12, in_units=64)
            self.out = gluon.nn.Dense(10, in_units=12)

    def hybrid_forward(self, F, x):  # noqa: N803
        return self.out(F.tanh(self.hidden(x)))


def _mlp(seed=0):
    mx.random.seed(seed)
    net = TinyMLP()
    net.initialize(mx.init.Xavier(magnitude=2.5))
    return net


def _smooth_conv(seed=0):
    """Convolution, tanh and average pooling: smooth, so central differences are meaningful."""
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 3, activation="tanh"), gluon.nn.AvgPool2D(2), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier(magnitude=2.5))
    net.hybridize(static_alloc=True)
    return net


def _exact_objective(net, x, y, weight):
    """sum_i CE_i + weight * ||grad_x CE_i||^2 from first-order gradients."""
    return float((cross_entropy(net(x), y).asnumpy() + weight * input_gradient_penalty(net, x, y)).sum())


@pytest.mark.parametrize("kind", ["mlp", "conv-hybridised"])
def test_finite_difference_gradient_matches_the_exact_objective(kind):
    """Central differences of the exact objective over a few weights vs the method's parameter gradient."""
    net = _mlp() if kind == "mlp" else _smooth_conv()
    x, y = nd.array(X), nd.array(Y)
    weight = 2.0
    with autograd.record():
        loss = InputGradientRegularization(weight=weight, h=1e-3)(net, x, y)
    loss.backward()
    param = next(p for p in net.collect_params().values() if p.name.endswith("weight"))
    base = param.data().asnumpy().astype(np.float64)
    analytic = param.grad().asnumpy().ravel()
    picks = np.random.RandomState(0).choice(base.size, 6, replace=False)
    numeric = []
    for i in picks:
        out = []
        for sign in (1, -1):
            value = base.copy().ravel()
            value[i] += sign * 1e-2
            param.set_data(nd.array(value.reshape(base.shape)))
            out.append(_exact_objective(net, x, y, weight))
        numeric.append((out[0] - out[1]) / 2e-2)
    param.set_data(nd.array(base))
    np.testing.assert_allclose(analytic[picks], numeric, rtol=0.05, atol=0.02 * np.abs(numeric).max())


def test_loss_is_cross_entropy_plus_weighted_penalty():
    model = training_model(bn=False)
    x, y = nd.array(X), nd.array(Y)
    penalty = input_gradient_penalty(model, x, y)
    with autograd.record():
        loss = InputGradientRegularization(weight=3.0, h=1e-3)(model, x, y).asnumpy()
        clean = cross_entropy(model(x), y).asnumpy()
    np.testing.assert_allclose(loss, clean + 3.0 * penalty, rtol=0.02, atol=1e-3)


def test_validation():
    with pytest.raises(ConfigError, match="weight must be >= 0, got -1"):
        InputGradientRegularization(weight=-1)
    with pytest.raises(ConfigError, match="h must be > 0, got 0"):
        InputGradientRegularization(h=0)

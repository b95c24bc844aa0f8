"""Input-gradient regularisation: penalise the squared norm of the loss's input gradient.

Ross & Doshi-Velez (2018), "Improving the Adversarial Robustness and
Interpretability of Deep Neural Networks by Regularizing their Input
Gradients", AAAI, https://arxiv.org/abs/1711.09404 (after Drucker & LeCun
1992, "Improving generalization performance using double backpropagation").
Per sample::

    CE(f(x), y) + weight * ||grad_x CE(f(x), y)||_2^2

**Why not double backpropagation.** Its parameter gradient needs the
second-order gradients of every layer, and MXNet 1.9.1 lacks them almost
everywhere (checked in ``tests/test_training_input_gradient.py``):

* ``Convolution``, ``Pooling``, ``BatchNorm``, the ``Activation`` and
  ``LeakyReLU`` ops (behind ``gluon.nn.Dense(activation=...)`` and
  ``nn.Activation``), ``log_softmax``, ``softmax``, ``softmax_cross_entropy``,
  ``pick``, ``sum``, ``dot``, every product (``elemwise_mul``,
  ``_mul_scalar``, ``negative``), ``elemwise_sub``, every ``broadcast_*`` op
  (so the normalisation inside :class:`~gluon_robust.model.Classifier`) and
  ``reshape``/``Flatten`` raise "Operator ... is non-differentiable";
* a hybridised block refuses outright ("CachedOp does not support higher
  order gradients");
* ``FullyConnected`` has one, but it is **wrong**: it drops the dependence
  of the incoming gradient on the input, so ``tanh(FC(x))`` gets a zero
  second derivative where the true one is not;
* only unary element-wise ops (``relu``, ``tanh``, ``sigmoid``, ``exp``,
  ``log``, ``sqrt``, ``square``, ``abs``, ``clip``, ``sin``),
  ``elemwise_add`` and ``_plus_scalar`` are right.

So no network, not even a two-layer perceptron, can be trained by double
backpropagation in MXNet 1.9.1.

**What this module does instead** (any network, hybridised, BatchNorm
included). With ``d = g / ||g||`` the normalised input gradient, held
constant, ``s = (CE(x + h d) - CE(x)) / h`` estimates ``||g||`` to ``O(h)``
and is an ordinary function of the parameters; ``CE(x) + weight * s^2`` is
the loss, and its parameter gradient approximates the double-backpropagation
gradient (Finlay & Oberman 2021, "Scaleable input gradient regularization
for adversarial robustness", https://arxiv.org/abs/1905.11468). It costs one
input-gradient pass and two training forwards. The tests check it against
central differences of the exact objective.
"""

from __future__ import annotations

import numpy as np
from mxnet import autograd, gluon, nd

from ..validation import check_positive
from .adversarial import TrainingMethod, cross_entropy
from .batchnorm import preserve_running_stats

__all__ = ["InputGradientRegularization", "input_gradient_penalty"]


def _input_gradient(model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
    """``grad_x sum_i CE_i`` in train mode, leaving the BatchNorm running statistics as they were."""
    with autograd.pause(train_mode=True), preserve_running_stats(model, x.context):
        xv = x.copy()
        xv.attach_grad()
        with autograd.record(train_mode=True):
            value = cross_entropy(model(xv), y)
        (grad,) = autograd.grad(value, [xv], retain_graph=False)
    return grad


class InputGradientRegularization(TrainingMethod):
    """Input-gradient regularisation (Ross & Doshi-Velez 2018), by finite differences.

    Parameters
    ----------
    weight : float
        Weight ``lambda`` of the squared input-gradient norm (default 1). Its
        scale depends on the input size and the loss; sweep it.
    h : float
        Finite-difference step in pixel units (default 0.01).
    seed : int
        Unused (the method is deterministic).

    Notes
    -----
    The input gradient is taken in train mode, like the training forwards.
    A train-mode BatchNorm couples the samples of a batch, so there the slope
    ``s`` of each sample also feels the other samples' steps; for networks
    without BatchNorm (or with folded or frozen statistics) it is the
    per-sample directional derivative.

    Examples
    --------
    >>> method = InputGradientRegularization(weight=10.0)
    >>> with autograd.record():
    ...     loss = method(model, x, y)
    """

    name = "input-grad"

    def __init__(self, *, weight: float = 1.0, h: float = 0.01, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.weight = check_positive("weight", weight, allow_zero=True)
        self.h = check_positive("h", h)

    def _loss(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        if self.weight == 0:
            return cross_entropy(model(x), y)
        with autograd.pause():
            grad = _input_gradient(model, x, y)
            norms = nd.norm(grad.reshape((grad.shape[0], -1)), axis=1)
            scale = 1.0 / nd.maximum(norms, nd.full(norms.shape, 1e-12, ctx=x.context))
            direction = grad * scale.reshape((-1,) + (1,) * (x.ndim - 1))
        clean = cross_entropy(model(x), y)
        slope = (cross_entropy(model(x + self.h * direction), y) - clean) / self.h
        return clean + self.weight * slope * slope


def input_gradient_penalty(model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> np.ndarray:
    """The per-sample ``||grad_x CE||_2^2`` in train mode (first-order gradients only), for checks and logs.

    BatchNorm running statistics are left as they were.
    """
    grad = _input_gradient(model, x, y)
    return (grad.reshape((grad.shape[0], -1)) ** 2).sum(axis=1).asnumpy()

"""Tiny models and data shared by the training tests."""

from __future__ import annotations

from typing import Dict, Tuple

import mxnet as mx
import numpy as np
from mxnet import gluon

from conftest import tiny_bn_net
from gluon_robust.model import Classifier
from gluon_robust.training.checkpoint import structural_params


def plain_net(seed: int = 0, classes: int = 10) -> gluon.HybridBlock:
    """A small conv net without BatchNorm (same function in train and eval mode)."""
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(6, 3, padding=1), gluon.nn.Activation("relu"), gluon.nn.MaxPool2D(2),
            gluon.nn.Dense(16, activation="tanh"), gluon.nn.Dense(classes))
    net.initialize(mx.init.Xavier(magnitude=2.5))
    net(mx.nd.zeros((1, 1, 8, 8)))
    return net


def training_model(bn: bool = True, seed: int = 0, ctx=None, hybridize: bool = True) -> Classifier:
    """An unfolded Classifier on 1x8x8 inputs, trainable (``grad_req='write'``), on every context of ``ctx``."""
    net = tiny_bn_net(seed=seed) if bn else plain_net(seed)
    ctx = list(ctx) if ctx else [mx.cpu()]
    model = Classifier(net, num_classes=10, input_size=(1, 8, 8), mean=0.5, std=0.25, ctx=ctx[0])
    model.collect_params().reset_ctx(ctx)
    net.collect_params().setattr("grad_req", "write")
    if hybridize:
        model.hybridize(static_alloc=True)
    return model


def tiny_data(n: int = 16, seed: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    return rng.rand(n, 1, 8, 8).astype(np.float32), rng.randint(0, 10, n).astype(np.int64)


def values(params: Dict[str, gluon.Parameter], ctx=None) -> Dict[str, np.ndarray]:
    return {k: p.data(ctx or p.list_ctx()[0]).asnumpy().copy() for k, p in params.items()}


def trainable(model: Classifier) -> Dict[str, gluon.Parameter]:
    """Trainable parameters by structural name (comparable across model instances)."""
    return {k: p for k, p in structural_params(model.net).items() if p.grad_req != "null"}


def stats(model: Classifier) -> Dict[str, gluon.Parameter]:
    """BatchNorm running statistics by structural name."""
    return {k: p for k, p in structural_params(model.net).items() if k.endswith(("running_mean", "running_var"))}

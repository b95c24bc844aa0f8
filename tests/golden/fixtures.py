"""The fixed tiny model, inputs and seeding that every golden case starts from."""

from __future__ import annotations

import random
from typing import Any, Dict, List, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from gluon_robust.model import Classifier, load_classifier
from gluon_robust.training.checkpoint import structural_params

Arrays = Dict[str, np.ndarray]

#: Input shape of one sample, and the number of classes of the tiny model.
SHAPE = (1, 8, 8)
CLASSES = 10
#: Radius per norm for the fixed-epsilon attacks (pixels in [0, 1]).
EPS = {"linf": 0.03, "l2": 0.2, "l1": 1.0}


# ---------------------------------------------------------------- fixed model and data
def seed_all(seed: int = 0) -> None:
    """Seed every global generator a case might touch, so that a case does not depend on the ones run before it."""
    mx.random.seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def tiny_net(seed: int = 0, batchnorm: bool = True) -> gluon.HybridBlock:
    """A small conv net on 1x8x8 inputs whose every parameter (BatchNorm statistics included) comes from ``seed``."""
    net = gluon.nn.HybridSequential()
    layers: List[gluon.Block] = [gluon.nn.Conv2D(6, 3, padding=1, use_bias=not batchnorm)]
    if batchnorm:
        layers.append(gluon.nn.BatchNorm())
    layers += [gluon.nn.Activation("relu"), gluon.nn.MaxPool2D(2), gluon.nn.Dense(16)]
    if batchnorm:
        layers.append(gluon.nn.BatchNorm())
    layers += [gluon.nn.Activation("tanh"), gluon.nn.Dense(CLASSES)]
    net.add(*layers)
    net.initialize(mx.init.Zero())
    net(nd.zeros((1,) + SHAPE))
    rng = np.random.RandomState(seed)
    for name, p in structural_params(net).items():
        shape = p.shape
        if name.endswith("weight"):
            value = rng.normal(0.0, 1.5 / np.sqrt(np.prod(shape[1:])), shape)
        elif name.endswith("bias") or name.endswith("beta") or name.endswith("running_mean"):
            value = rng.normal(0.0, 0.2, shape)
        elif name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        else:  # pragma: no cover - a layer type this net does not have
            raise AssertionError(f"unexpected parameter {name}")
        p.set_data(nd.array(value.astype(np.float32)))
    return net


def eval_model(seed: int = 0) -> Classifier:
    """The frozen, folded, hybridised classifier that attacks, detectors and defences run on."""
    return load_classifier(tiny_net(seed), input_size=SHAPE, mean=0.5, std=0.25)


def train_model(seed: int = 0, batchnorm: bool = True) -> Classifier:
    """A trainable (unfolded, ``grad_req='write'``) classifier for the training methods."""
    net = tiny_net(seed, batchnorm=batchnorm)
    model = Classifier(net, num_classes=CLASSES, input_size=SHAPE, mean=0.5, std=0.25)
    net.collect_params().setattr("grad_req", "write")
    model.hybridize(static_alloc=True)
    return model


def inputs(n: int, seed: int = 1) -> np.ndarray:
    """``n`` fixed inputs in [0, 1]."""
    return np.random.RandomState(seed).rand(n, *SHAPE).astype(np.float32)


def labelled(model: Classifier, n: int = 4, seed: int = 1) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed inputs, the model's own labels for them, and fixed targets different from those labels."""
    x = inputs(n, seed)
    y = model.predict(x).argmax(axis=1).astype(np.int64)
    target = ((y + 1 + np.arange(n) % (CLASSES - 1)) % CLASSES).astype(np.int64)
    return x, y, target


def as_numpy(value: Any) -> np.ndarray:
    return value.asnumpy() if isinstance(value, nd.NDArray) else np.asarray(value)


def input_gradient(model: Any, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Logits and the gradient of the summed cross-entropy with respect to the input, as attacks take it."""
    from gluon_robust.attacks.base import gradient_recording
    from gluon_robust.training.adversarial import cross_entropy

    xv = nd.array(x)
    xv.attach_grad()
    with gradient_recording(model):
        logits = model(xv)
        loss = nd.sum(cross_entropy(logits, nd.array(y)))
    (grad,) = autograd.grad(loss, [xv], retain_graph=False)
    return logits.asnumpy(), grad.asnumpy()

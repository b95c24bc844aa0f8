"""Shared fixtures: tiny models with BatchNorm, linear models with closed-form optima, real digits."""

from __future__ import annotations

import os
import warnings
from typing import Tuple

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from gluon_robust.model import Classifier, load_classifier

warnings.filterwarnings("ignore", message="Cannot decide type", category=UserWarning)
os.environ.setdefault("MXNET_HOME", os.path.join(os.path.dirname(__file__), ".mxnet_home_unused"))


def tiny_bn_net(channels: int = 1, classes: int = 10, seed: int = 0) -> gluon.HybridBlock:
    """A small conv net with BatchNorm after a conv and after a dense layer, random BN statistics."""
    mx.random.seed(seed)
    np.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(
        gluon.nn.Conv2D(8, 3, padding=1, use_bias=False),
        gluon.nn.BatchNorm(),
        gluon.nn.Activation("relu"),
        gluon.nn.MaxPool2D(2),
        gluon.nn.Dense(16),
        gluon.nn.BatchNorm(),
        gluon.nn.Activation("tanh"),
        gluon.nn.Dense(classes),
    )
    net.initialize(mx.init.Xavier(magnitude=2.5))
    net(mx.nd.zeros((1, channels, 8, 8)))
    rng = np.random.RandomState(seed)
    for name, p in net.collect_params().items():
        if name.endswith("running_mean"):
            p.set_data(mx.nd.array(rng.normal(0, 0.2, p.shape)))
        elif name.endswith("running_var"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 2.0, p.shape)))
        elif name.endswith("gamma"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
        elif name.endswith("beta"):
            p.set_data(mx.nd.array(rng.normal(0, 0.2, p.shape)))
    return net


@pytest.fixture
def tiny_model() -> Classifier:
    """A folded, hybridised 10-class classifier on 1x8x8 inputs in [0, 1]."""
    return load_classifier(tiny_bn_net(), input_size=(1, 8, 8), mean=0.5, std=0.25)


@pytest.fixture
def tiny_batch(tiny_model: Classifier) -> Tuple[np.ndarray, np.ndarray]:
    """Sixteen random inputs in [0, 1] with the model's own predictions as labels."""
    x = np.random.RandomState(1).rand(16, 1, 8, 8).astype(np.float32)
    return x, tiny_model.predict(x).argmax(axis=1)


def linear_classifier(w: np.ndarray, b: float, bounds: Tuple[float, float] = (-1e4, 1e4)) -> Classifier:
    """A two-class linear model with logits ``[0, w.x + b]``.

    The minimal L2 distance to its decision boundary is ``|f(x)| / ||w||_2``
    and the minimal L-inf distance is ``|f(x)| / ||w||_1`` (unclipped domain).
    """
    w = np.asarray(w, dtype=np.float32)
    dense = gluon.nn.Dense(2, in_units=w.size)
    dense.initialize()
    weight = np.zeros((2, w.size), np.float32)
    weight[1] = w.reshape(-1)
    dense.weight.set_data(mx.nd.array(weight))
    dense.bias.set_data(mx.nd.array([0.0, b]))
    shape = {1: (1, 1) + w.shape, 2: (1,) + w.shape, 3: w.shape}[w.ndim]
    return load_classifier(dense, input_size=shape, bounds=bounds)


@pytest.fixture(scope="session")
def mnist_test() -> Tuple[np.ndarray, np.ndarray]:
    """The bundled real MNIST test digits, float32 NCHW in [0, 1]."""
    from gluon_robust.data import load_data

    return load_data("mnist-sample", split="test").arrays()


#: Test modules whose every test is one case of a row of the README's reliability table (tests/reliability.py).
_RELIABILITY_ROWS = {
    "test_file_safety.py": "files that could run code (planted pickles, tampered or missing files)",
    "test_faults.py": "faults (kills, SIGINT and SIGTERM, non-finite training, reused outputs)",
}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Count each test of the modules above once, in the reliability log, as handled when it passed."""
    outcome = yield
    report = outcome.get_result()
    kind = _RELIABILITY_ROWS.get(item.path.name)
    if kind is not None and (report.when == "call" or (report.when == "setup" and report.failed)):
        from reliability import tally

        tally(kind, report.passed)

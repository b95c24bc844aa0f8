"""The shipped reference models: their exact bytes, accuracy on the bundled test digits, and robustness."""

from __future__ import annotations

from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from gluon_robust.attacks import get_attack
from gluon_robust.config import load_config
from gluon_robust.io import sha256_of
from gluon_robust.model import load_classifier

CONFIGS = Path(__file__).resolve().parents[1] / "model_configs"
# Computed once with `sha256sum model_configs/NAME.params`; a retrained or corrupted file must be a
# deliberate change to these lines.
SHA256 = {
    "mnist_resnet20": "3895228aa85c5d9917e544f0ace85777b93d9688b8c616f3d6952662293f415b",
    "mnist_resnet20_pgdat": "b03c68d34cd429f305613984244684b9f07c1593d885c732a5b2294ede3a7de1",
}


@pytest.mark.parametrize("name", sorted(SHA256))
def test_reference_params_are_the_shipped_bytes(name):
    params = CONFIGS / f"{name}.params"
    assert params.is_file()
    assert sha256_of(params) == SHA256[name]


@pytest.mark.parametrize("name", sorted(SHA256))
def test_reference_config_points_at_the_shipped_params(name):
    config = load_config(name)
    assert Path(config.params) == (CONFIGS / f"{name}.params").resolve()
    assert (config.model, config.classes, config.input_size) == ("cifar_resnet20_v1", 10, (1, 28, 28))
    assert (config.mean, config.std, config.bounds) == ((0.1307,), (0.3081,), (0.0, 1.0))


@pytest.mark.parametrize("name,robust_at_least,robust_at_most", [
    ("mnist_resnet20", 0.0, 0.05),          # the standard model: PGD at eps 0.3 breaks (nearly) every digit
    ("mnist_resnet20_pgdat", 0.85, 1.0),    # the PGD-AT model keeps most of them
])
def test_reference_robustness_at_eps_0_3(name, robust_at_least, robust_at_most, mnist_test):
    x, y = mnist_test[0][:100], mnist_test[1][:100]
    model = load_classifier(name)
    clean = model.predict(x).argmax(axis=1) == y
    result = get_attack("pgd", eps=0.3, steps=20, seed=0)(model, x, y)
    robust = float((clean & ~result.success).mean())
    assert robust_at_least <= robust <= robust_at_most, f"{name}: {robust:.2f} robust under PGD-20 at eps 0.3"


@pytest.fixture(scope="module")
def reference_model():
    return load_classifier("mnist_resnet20")


@pytest.mark.parametrize("name", sorted(SHA256))
def test_reference_accuracy_on_the_bundled_test_digits(name, mnist_test):
    x, y = mnist_test
    assert x.shape == (1000, 1, 28, 28) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert len(np.unique(y)) == 10
    pred = load_classifier(name).predict(x).argmax(axis=1)
    accuracy = float((pred == y).mean())
    assert accuracy >= 0.97, f"{name} accuracy {accuracy:.3f}"


def test_folded_and_unfolded_reference_agree(reference_model, mnist_test):
    x = mnist_test[0][:200]
    unfolded = load_classifier("mnist_resnet20", fold=False)
    a, b = reference_model.predict(x), unfolded.predict(x)
    assert np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(b).max())
    assert (a.argmax(1) == b.argmax(1)).all()


def test_reference_model_is_frozen_with_nonzero_input_gradients(reference_model, mnist_test):
    x = mx.nd.array(mnist_test[0][:4])
    x.attach_grad()
    with mx.autograd.record(train_mode=reference_model.mode_free):
        loss = mx.nd.softmax_cross_entropy(reference_model(x), mx.nd.array(mnist_test[1][:4]))
    loss.backward()
    assert np.isfinite(x.grad.asnumpy()).all() and np.abs(x.grad.asnumpy()).max() > 0
    assert all(p.grad_req == "null" for p in reference_model.collect_params().values())

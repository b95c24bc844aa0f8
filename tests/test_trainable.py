"""trainable_classifier: BatchNorm kept, parameters trainable, head replacement, and the frozen-model error."""

from __future__ import annotations

from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo import get_model
from mxnet import autograd, gluon

import gluon_robust
from gluon_robust.data import ArraySource, load_data
from gluon_robust.errors import ModelError
from gluon_robust.model import load_classifier, replace_head, trainable_classifier
from gluon_robust.training import fit_classifier, get_method
from gluon_robust.training.loop import train_adversarial

FROZEN = r"loaded for evaluation \(BatchNorm folded, parameters frozen\).*gluon_robust\.trainable_classifier"


def _batchnorms(block: gluon.Block) -> int:
    own = int(isinstance(block, gluon.nn.BatchNorm))
    return own + sum(_batchnorms(child) for child in block._children.values())


def _random_zoo_params(name: str, path: Path, seed: int, **kwargs) -> Path:
    """Save random, fixed weights of a zoo network: a stand-in for GluonCV's pretrained ones (offline)."""
    mx.random.seed(seed)
    net = get_model(name, **kwargs)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    net.save_parameters(str(path))
    return path


def test_trainable_bundled_config_keeps_batchnorm_and_computes_the_evaluation_function():
    model = trainable_classifier("mnist_resnet20")
    assert not model.folded and not model.frozen
    # cifar_resnet20_v1: one after the stem, two per block (9 blocks), one per downsampling shortcut (2)
    assert _batchnorms(model.net) == 21
    # the bundled config's normalisation and input size (model_configs/mnist_resnet20.yaml)
    np.testing.assert_allclose(model.mean.data().asnumpy().ravel(), [0.1307], rtol=1e-6)
    np.testing.assert_allclose(model.std.data().asnumpy().ravel(), [0.3081], rtol=1e-6)
    assert model.input_size == (1, 28, 28) and model.num_classes == 10
    trainable = [p for p in model.collect_params().values() if p.grad_req != "null"]
    stats = [name for name, p in model.collect_params().items() if name.endswith(("running_mean", "running_var"))]
    assert stats and all(model.collect_params()[name].grad_req == "null" for name in stats)
    assert len(trainable) == len(model.collect_params().keys()) - len(stats) - 2  # all but statistics, mean, std
    # in eval mode it computes what the folded evaluation model computes, from the same weights
    x, _ = load_data("mnist-sample", limit=8).arrays()
    frozen = load_classifier("mnist_resnet20")
    np.testing.assert_allclose(model.predict(x), frozen.predict(x), rtol=1e-4, atol=1e-4)


def test_trainable_zoo_name_takes_the_family_defaults():
    model = trainable_classifier("resnet18_v1", classes=4, hybridize=False)
    np.testing.assert_allclose(model.mean.data().asnumpy().ravel(), [0.485, 0.456, 0.406], rtol=1e-6)
    np.testing.assert_allclose(model.std.data().asnumpy().ravel(), [0.229, 0.224, 0.225], rtol=1e-6)
    assert model.input_size == (3, 224, 224) and model.num_classes == 4


def test_trainable_user_block_is_initialised_and_trains():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 3), gluon.nn.BatchNorm(), gluon.nn.Activation("relu"), gluon.nn.Dense(3))
    model = trainable_classifier(net, input_size=(1, 8, 8), mean=0.5, std=0.5)
    assert model.num_classes == 3
    before = net[3].weight.data().asnumpy().copy()
    trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": 0.1})
    x = mx.nd.array(np.random.RandomState(0).rand(4, 1, 8, 8))
    with autograd.record():
        loss = get_method("standard")(model, x, mx.nd.array([0, 1, 2, 0]))
    loss.backward()
    trainer.step(4)
    assert np.abs(net[3].weight.data().asnumpy() - before).max() > 0


def test_replace_head_keeps_the_body_and_draws_a_seeded_fresh_head(tmp_path):
    weights = _random_zoo_params("resnet18_v1", tmp_path / "r18.params", seed=3)
    saved = mx.nd.load(str(weights))
    first = trainable_classifier("resnet18_v1", params=weights, new_classes=2, input_size=(3, 32, 32), seed=5)
    again = trainable_classifier("resnet18_v1", params=weights, new_classes=2, input_size=(3, 32, 32), seed=5)
    other = trainable_classifier("resnet18_v1", params=weights, new_classes=2, input_size=(3, 32, 32), seed=6)
    assert first.num_classes == 2 and first.net.output.weight.shape == (2, 512)
    body = first.net.features[0].weight.data().asnumpy()
    np.testing.assert_array_equal(body, saved["features.0.weight"].asnumpy())  # the loaded weights are kept
    head = first.net.output.weight.data().asnumpy()
    np.testing.assert_array_equal(head, again.net.output.weight.data().asnumpy())
    assert np.abs(head - other.net.output.weight.data().asnumpy()).max() > 0
    x = np.random.RandomState(0).rand(3, 3, 32, 32).astype(np.float32)
    assert first.predict(x).shape == (3, 2)


def test_replace_head_finds_fc_and_refuses_convolution_heads():
    mx.random.seed(0)
    v1b = get_model("resnet18_v1b")
    v1b.initialize()
    assert replace_head(v1b, 3) == "fc" and v1b.fc._units == 3
    squeeze = get_model("squeezenet1.0")
    with pytest.raises(ModelError, match="cannot replace the head of SqueezeNet: it has no Dense layer"):
        replace_head(squeeze, 3)
    with pytest.raises(gluon_robust.ConfigError, match="new_classes must be an integer >= 2, got 1"):
        replace_head(v1b, 1)


def test_frozen_evaluation_model_is_refused_by_training_with_a_clear_error():
    frozen = load_classifier("mnist_resnet20")
    x = mx.nd.zeros((2, 1, 28, 28))
    y = mx.nd.array([0, 1])
    for method in (get_method("pgd-at", eps=0.1), get_method("trades", eps=0.1), get_method("standard")):
        with pytest.raises(ModelError, match=FROZEN):
            with autograd.record():
                method(frozen, x, y)
    data = ArraySource(np.zeros((4, 1, 28, 28), np.float32), np.arange(4))
    with pytest.raises(ModelError, match=FROZEN):
        train_adversarial(frozen, get_method("pgd-at", eps=0.1), data, epochs=1, batch_size=2, progress=False)
    with pytest.raises(ModelError, match=FROZEN):
        fit_classifier(frozen, data, epochs=1, batch_size=2)
    unfolded = load_classifier("mnist_resnet20", fold=False)  # frozen too, though BatchNorm is kept
    with pytest.raises(ModelError, match=FROZEN):
        get_method("pgd-at", eps=0.1)(unfolded, x, y)


def _colour_folder(root: Path, per_class: int = 12, size: int = 32) -> Path:
    """Two classes told apart by colour: reddish and bluish noisy squares (PNG, BGR as OpenCV writes)."""
    rng = np.random.RandomState(0)
    for label, (b, g, r) in enumerate(((40, 40, 200), (200, 60, 40))):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            base = np.array([b, g, r], np.float32) + rng.normal(0, 25, (size, size, 3))
            cv2.imwrite(str(folder / f"{i}.png"), np.clip(base, 0, 255).astype(np.uint8))
    return root


def test_fine_tuning_a_zoo_network_with_a_new_head_lowers_the_loss(tmp_path):
    folder = _colour_folder(tmp_path / "photos")
    weights = _random_zoo_params("mobilenet0.25", tmp_path / "mobilenet.params", seed=1)
    data = load_data(f"folder:{folder}", input_size=32)
    x, y = data.arrays()
    assert x.shape == (24, 3, 32, 32) and sorted(np.bincount(y)) == [12, 12]
    model = trainable_classifier("mobilenet0.25", params=weights, new_classes=2, input_size=(3, 32, 32), seed=0)
    trainer = gluon.Trainer(model.collect_params(), "adam", {"learning_rate": 1e-3})
    method = get_method("standard")
    order = np.random.RandomState(0)
    epoch_losses = []
    for _ in range(2):
        losses = []
        for batch in np.array_split(order.permutation(len(y)), 3):
            xb, yb = mx.nd.array(x[batch]), mx.nd.array(y[batch])
            with autograd.record():
                loss = method(model, xb, yb)
            loss.backward()
            trainer.step(len(batch))
            losses.append(float(loss.mean().asscalar()))
        epoch_losses.append(float(np.mean(losses)))
    assert epoch_losses[1] < epoch_losses[0] - 0.05, epoch_losses

"""load_classifier and Classifier: every model source, weights, normalisation inside the model."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Tuple

import cv2
import mxnet as mx
import numpy as np
import pytest
import yaml
from gluoncv.model_zoo import get_model, model_store
from mxnet import gluon
from mxnet.gluon.data.vision import transforms
from skimage import data as skdata

from gluon_robust.config import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, load_config
from gluon_robust.data import load_data
from gluon_robust.errors import ConfigError, ModelError
from gluon_robust.model import Classifier, load_classifier

warnings.filterwarnings("ignore", message="Cannot decide type", category=UserWarning)

# GluonCV's own normalisation constants (gluoncv.data.transforms.presets.imagenet and
# scripts/classification/cifar/train_cifar10.py), written out independently of gluon_robust.
GLUONCV_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
GLUONCV_CIFAR = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))

TOL = 1e-4


# ----------------------------------------------------------------- helpers
def randomise_bn(net: gluon.Block, seed: int = 0) -> None:
    rng = np.random.RandomState(seed)
    for name, p in net.collect_params().items():
        if name.endswith("running_mean"):
            p.set_data(mx.nd.array(rng.normal(0.0, 0.2, p.shape)))
        elif name.endswith("running_var"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 2.0, p.shape)))
        elif name.endswith("gamma"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
        elif name.endswith("beta"):
            p.set_data(mx.nd.array(rng.normal(0.0, 0.2, p.shape)))


def raw_zoo_net(name: str, shape: Tuple[int, ...], classes: int = 10, seed: int = 0) -> gluon.HybridBlock:
    mx.random.seed(seed)
    net = get_model(name, classes=classes)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net(mx.nd.zeros(shape))
    randomise_bn(net, seed)
    net(mx.nd.zeros(shape))  # let fix_gamma layers reset their gamma before anything is saved
    return net


def gluoncv_normalise(x: np.ndarray, mean, std) -> mx.nd.NDArray:
    """GluonCV-style normalisation with Gluon's own transform."""
    return transforms.Normalize(mean=mean, std=std)(mx.nd.array(x))


def pixels(shape: Tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.RandomState(seed).rand(*shape).astype(np.float32)


def assert_close(a, b, tol: float = TOL) -> None:
    a = a.asnumpy() if isinstance(a, mx.nd.NDArray) else np.asarray(a)
    b = b.asnumpy() if isinstance(b, mx.nd.NDArray) else np.asarray(b)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max()), np.abs(a - b).max()


class SmallNet(gluon.HybridBlock):
    """A user block: conv + BN + dense, 7 classes."""

    def __init__(self, classes: int = 7) -> None:
        super().__init__()
        with self.name_scope():
            self.conv = gluon.nn.Conv2D(4, 3, padding=1, use_bias=False)
            self.bn = gluon.nn.BatchNorm()
            self.fc = gluon.nn.Dense(classes)

    def hybrid_forward(self, F, x):  # noqa: N803
        return self.fc(F.relu(self.bn(self.conv(x))))


def small_net(channels: int = 1) -> SmallNet:
    mx.random.seed(0)
    net = SmallNet()
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, channels, 8, 8)))
    randomise_bn(net)
    return net


def all_frozen(model: gluon.Block) -> bool:
    return all(p.grad_req == "null" for p in model.collect_params().values())


# ------------------------------------------------------------ zoo names
def test_zoo_name_builds_a_folded_classifier_with_family_defaults():
    model = load_classifier("cifar_resnet20_v1")
    assert isinstance(model, Classifier)
    assert (model.num_classes, model.input_size, model.bounds) == (10, (3, 32, 32), (0.0, 1.0))
    assert model.folded and model.arch == "cifar_resnet20_v1"
    np.testing.assert_allclose(model.mean.data().asnumpy().ravel(), GLUONCV_CIFAR[0], rtol=1e-6)
    np.testing.assert_allclose(model.std.data().asnumpy().ravel(), GLUONCV_CIFAR[1], rtol=1e-6)
    assert all_frozen(model)
    logits = model.predict(pixels((5, 3, 32, 32)), batch_size=2)
    assert logits.shape == (5, 10) and logits.dtype == np.float32 and np.isfinite(logits).all()
    np.testing.assert_allclose(logits, model.predict(pixels((5, 3, 32, 32))), rtol=1e-5, atol=1e-6)
    assert "cifar_resnet20_v1" in model.describe() and "folded" in model.describe()


def test_imagenet_zoo_name_defaults():
    model = load_classifier("mobilenet0.25", fold=False, hybridize=False)
    assert (model.num_classes, model.input_size) == (1000, (3, 224, 224))
    np.testing.assert_allclose(model.mean.data().asnumpy().ravel(), GLUONCV_IMAGENET[0], rtol=1e-6)
    np.testing.assert_allclose(model.std.data().asnumpy().ravel(), GLUONCV_IMAGENET[1], rtol=1e-6)
    assert not model.folded and all_frozen(model)


@pytest.mark.parametrize("name, expected", [("resnet18_v3", "resnet18_v1"), ("cifar_resnet20_v3", "cifar_resnet20_v1"),
                                            ("mobilenetv2_1.1", "mobilenetv2_1.0")])
def test_unknown_zoo_name_lists_close_matches(name, expected):
    with pytest.raises(ModelError, match=rf"unknown model '{name}'; close matches: .*{expected}") as info:
        load_classifier(name)
    assert len(str(info.value).splitlines()) == 1


def test_empty_source_is_rejected():
    with pytest.raises(ModelError, match="no model given"):
        load_classifier("  ")


def test_family_constants_are_gluoncv_constants():
    assert (IMAGENET_MEAN, IMAGENET_STD) == GLUONCV_IMAGENET
    assert (CIFAR_MEAN, CIFAR_STD) == GLUONCV_CIFAR


# ------------------------------------------------------------ user blocks
def test_user_hybridblock_is_wrapped_with_normalisation_inside():
    net = small_net()
    x = pixels((4, 1, 8, 8))
    expected = net(mx.nd.array((x - 0.5) / 0.25))
    model = load_classifier(net, input_size=(1, 8, 8), mean=0.5, std=0.25)
    assert model.num_classes == 7 and model.input_size == (1, 8, 8)
    assert_close(model(mx.nd.array(x)), expected)
    assert all_frozen(model)
    # The user's block keeps its BatchNorm and its trainable parameters.
    assert {p.grad_req for p in net.collect_params().values() if not p.name.endswith(("mean", "var"))} == {"write"}


def test_user_block_class_count_is_checked_against_the_output():
    with pytest.raises(ModelError, match="outputs 7 class scores but 5 classes were expected"):
        load_classifier(small_net(), input_size=(1, 8, 8), classes=5)


def test_user_block_needs_classes_or_an_input_size():
    with pytest.raises(ModelError, match="pass classes= or input_size="):
        load_classifier(small_net())
    model = load_classifier(small_net(), classes=7)  # every BN folds, so no shape is needed
    assert model.num_classes == 7 and model.input_size is None
    assert model.predict(pixels((2, 1, 8, 8))).shape == (2, 7)


def test_uninitialised_user_block_is_a_model_error():
    with pytest.raises(ModelError, match="not initialised"):
        load_classifier(SmallNet(), input_size=(1, 8, 8))


def test_block_with_wrong_input_size_is_a_model_error():
    net = get_model("cifar_resnet20_v1", classes=10)
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    with pytest.raises(ModelError, match=r"does not accept inputs of size \(1, 32, 32\)"):
        load_classifier(net, input_size=(1, 32, 32))


# ------------------------------------------------------------------ configs
def test_config_yaml_with_relative_params(tmp_path):
    raw = raw_zoo_net("cifar_resnet20_v1", (1, 3, 32, 32))
    (tmp_path / "weights").mkdir()
    raw.save_parameters(str(tmp_path / "weights" / "w.params"))
    config = {"model": "cifar_resnet20_v1", "classes": 10, "params": "weights/w.params", "mean": [0.5, 0.4, 0.3],
              "std": [0.2, 0.25, 0.3], "bounds": [0.0, 1.0], "input_size": [3, 32, 32]}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    x = pixels((3, 3, 32, 32))
    expected = raw(gluoncv_normalise(x, config["mean"], config["std"]))
    for source in (str(path), path, load_config(path)):
        model = load_classifier(source)
        assert (model.num_classes, model.input_size) == (10, (3, 32, 32))
        assert_close(model(mx.nd.array(x)), expected)


def test_bundled_config_by_name():
    model = load_classifier("mnist_resnet20")
    assert (model.num_classes, model.input_size, model.bounds) == (10, (1, 28, 28), (0.0, 1.0))
    np.testing.assert_allclose(model.mean.data().asnumpy().ravel(), [0.1307], rtol=1e-6)
    np.testing.assert_allclose(model.std.data().asnumpy().ravel(), [0.3081], rtol=1e-6)


def test_config_without_weights_is_freshly_initialised(caplog):
    model = load_classifier("model_configs/cifar_resnet20_v1.yaml")
    assert "freshly initialised" in caplog.text
    out = model.predict(pixels((2, 3, 32, 32)))
    assert out.shape == (2, 10) and np.isfinite(out).all() and np.abs(out).max() > 0


# ----------------------------------------------------------- symbol files
@pytest.fixture
def exported(tmp_path) -> Tuple[Path, gluon.HybridBlock]:
    raw = raw_zoo_net("cifar_resnet20_v1", (1, 3, 32, 32), seed=4)
    raw.hybridize()
    raw(mx.nd.zeros((1, 3, 32, 32)))
    raw.export(str(tmp_path / "net"))
    return tmp_path / "net-symbol.json", raw


def test_symbol_file_with_params_beside_it(exported):
    symbol_file, raw = exported
    model = load_classifier(str(symbol_file), input_size=(3, 32, 32))
    assert model.num_classes == 10 and model.folded and model.arch == "net"
    x = pixels((2, 3, 32, 32))
    assert_close(model(mx.nd.array(x)), raw(mx.nd.array(x)))  # mean 0, std 1 by default
    assert all_frozen(model)
    with_stats = load_classifier(symbol_file, params=symbol_file.parent / "net-0000.params", input_size=(3, 32, 32),
                                 mean=GLUONCV_CIFAR[0], std=GLUONCV_CIFAR[1])
    assert_close(with_stats(mx.nd.array(x)), raw(gluoncv_normalise(x, *GLUONCV_CIFAR)))


def test_symbol_file_errors(exported, tmp_path):
    symbol_file, _ = exported
    other = tmp_path / "other"
    other.mkdir()
    (other / "lonely-symbol.json").write_text(symbol_file.read_text())
    with pytest.raises(ModelError, match="no params for .*pass --params FILE"):
        load_classifier(str(other / "lonely-symbol.json"), input_size=(3, 32, 32))
    (other / "bad-symbol.json").write_text("{not json")
    with pytest.raises(ModelError, match="not a valid MXNet symbol JSON"):
        load_classifier(str(other / "bad-symbol.json"), params=str(symbol_file.parent / "net-0000.params"),
                        input_size=(3, 32, 32))
    with pytest.raises(ModelError, match="symbol file not found"):
        load_classifier(str(other / "missing-symbol.json"), input_size=(3, 32, 32))


# ------------------------------------------------------------------ weights
def test_explicit_params_in_both_formats(exported, tmp_path):
    symbol_file, raw = exported
    raw.save_parameters(str(tmp_path / "structural.params"))
    x = pixels((2, 3, 32, 32))
    expected = raw(gluoncv_normalise(x, *GLUONCV_CIFAR))
    # save_parameters format, and the export format (arg:/aux: names with another net's prefix).
    for params in (tmp_path / "structural.params", symbol_file.parent / "net-0000.params"):
        model = load_classifier("cifar_resnet20_v1", params=params)
        assert_close(model(mx.nd.array(x)), expected)


def test_params_that_do_not_fit(tmp_path):
    raw_zoo_net("cifar_resnet20_v1", (1, 3, 32, 32)).save_parameters(str(tmp_path / "r20.params"))
    with pytest.raises(ModelError, match="does not fit the model"):
        load_classifier("cifar_resnet56_v1", params=tmp_path / "r20.params")
    with pytest.raises(ModelError, match="params file not found"):
        load_classifier("cifar_resnet20_v1", params=tmp_path / "nope.params")
    (tmp_path / "junk.params").write_bytes(np.random.RandomState(0).bytes(2048))
    with pytest.raises(ModelError, match="not a valid MXNet .params file"):
        load_classifier("cifar_resnet20_v1", params=tmp_path / "junk.params")


def test_pretrained_not_cached_names_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MXNET_HOME", str(tmp_path))
    sha1 = model_store._model_sha1["cifar_resnet20_v1"]
    expected = tmp_path / "models" / f"cifar_resnet20_v1-{sha1[:8]}.params"
    for source in ("cifar_resnet20_v1", "model_configs/cifar_resnet20_v1.yaml"):
        with pytest.raises(ModelError, match="not cached") as info:
            load_classifier(source, pretrained=True)
        message = str(info.value)
        assert str(expected) in message and "--params" in message and "offline" in message
        assert len(message.splitlines()) == 1
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())  # nothing downloaded


def test_pretrained_unpublished_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("MXNET_HOME", str(tmp_path))
    assert "se_resnet18_v1" not in model_store._model_sha1
    with pytest.raises(ModelError, match="publishes no pretrained weights for 'se_resnet18_v1'.*--params"):
        load_classifier("se_resnet18_v1", pretrained=True)


def _cache_weights(tmp_path: Path, monkeypatch, net: gluon.HybridBlock, name: str) -> Path:
    """Put ``net``'s weights where GluonCV's model store keeps ``name``'s, under a SHA-1 we declare."""
    src = tmp_path / "src.params"
    net.save_parameters(str(src))
    sha1 = hashlib.sha1(src.read_bytes()).hexdigest()
    monkeypatch.setitem(model_store._model_sha1, name, sha1)
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "home"))
    cached = tmp_path / "home" / "models" / f"{name}-{sha1[:8]}.params"
    cached.parent.mkdir(parents=True)
    os.replace(src, cached)
    return cached


def test_pretrained_from_the_offline_cache(tmp_path, monkeypatch):
    raw = raw_zoo_net("cifar_resnet20_v1", (1, 3, 32, 32), seed=2)
    cached = _cache_weights(tmp_path, monkeypatch, raw, "cifar_resnet20_v1")
    x = pixels((2, 3, 32, 32))
    model = load_classifier("cifar_resnet20_v1", pretrained=True)
    assert_close(model(mx.nd.array(x)), raw(gluoncv_normalise(x, *GLUONCV_CIFAR)))
    # A corrupted cache file fails its checksum instead of loading silently.
    cached.write_bytes(cached.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelError, match="fail their SHA-1 check"):
        load_classifier("cifar_resnet20_v1", pretrained=True)


def test_params_override_pretrained_when_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "empty"))
    raw = raw_zoo_net("cifar_resnet20_v1", (1, 3, 32, 32), seed=5)
    raw.save_parameters(str(tmp_path / "w.params"))
    x = pixels((2, 3, 32, 32))
    for source in ("cifar_resnet20_v1", "model_configs/cifar_resnet20_v1.yaml"):
        model = load_classifier(source, pretrained=True, params=tmp_path / "w.params")
        assert_close(model(mx.nd.array(x)), raw(gluoncv_normalise(x, *GLUONCV_CIFAR)))


def test_wrong_class_count_with_fitting_architecture(tmp_path):
    with pytest.raises(ModelError, match="does not fit the model"):
        load_classifier("mnist_resnet20", classes=5)


# ------------------------------------------------------------- normalisation
def _flatten_classifier(mean, std, channels: int = 3) -> Classifier:
    return Classifier(gluon.nn.Flatten(), num_classes=channels * 4, input_size=(channels, 2, 2), mean=mean, std=std)


def test_per_channel_normalisation_inside_the_wrapper():
    x = pixels((2, 3, 2, 2))
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.4, 0.8)
    out = _flatten_classifier(mean, std)(mx.nd.array(x)).asnumpy()
    expected = ((x - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))).reshape(2, -1)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    out = _flatten_classifier(0.25, 0.5)(mx.nd.array(x)).asnumpy()
    np.testing.assert_allclose(out, ((x - 0.25) / 0.5).reshape(2, -1), rtol=1e-6)


def test_bad_normalisation_and_bounds_are_config_errors():
    with pytest.raises(ConfigError, match="mean has 2 values but the input has 3 channels"):
        _flatten_classifier((0.1, 0.2), 1.0)
    with pytest.raises(ConfigError, match="std must be positive"):
        _flatten_classifier(0.0, (1.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match="bounds must satisfy low < high"):
        Classifier(gluon.nn.Flatten(), num_classes=2, bounds=(1.0, 0.0))
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 2"):
        Classifier(gluon.nn.Flatten(), num_classes=1)
    with pytest.raises(ConfigError, match="std has 2 values"):
        load_classifier("mnist_resnet20", std=(0.3, 0.3))


def test_cifar_zoo_model_normalises_inside():
    """Pixel inputs through the wrapper equal the raw net on GluonCV-normalised inputs, folded or not."""
    x = pixels((4, 3, 32, 32))
    unfolded = load_classifier("cifar_resnet20_v1", fold=False)
    raw = unfolded.net
    randomise_bn(raw)
    expected = raw(gluoncv_normalise(x, *GLUONCV_CIFAR))
    assert_close(unfolded(mx.nd.array(x)), expected)
    assert np.abs(raw(mx.nd.array(x)).asnumpy() - expected.asnumpy()).max() > 100 * TOL  # it matters
    folded = load_classifier(raw, mean=CIFAR_MEAN, std=CIFAR_STD, input_size=(3, 32, 32))
    assert_close(folded(mx.nd.array(x)), expected)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """scikit-image's astronaut, chelsea and coffee photographs, one class folder each."""
    root = tmp_path_factory.mktemp("photos")
    for cls, name, ext in (("people", "astronaut", ".png"), ("cat", "chelsea", ".jpg"), ("cup", "coffee", ".jpg")):
        (root / cls).mkdir()
        rgb = getattr(skdata, name)()
        assert cv2.imwrite(str(root / cls / f"{name}{ext}"), np.ascontiguousarray(rgb[:, :, ::-1]))
    return root


def test_imagenet_size_path_on_real_photographs(photo_folder, tmp_path):
    # resnet18_v1 with MSRA init keeps an input-dependent signal through the depth (freshly
    # initialised MobileNets collapse to ~1e-11 logits, which would make the check toothless).
    mx.random.seed(1)
    raw = get_model("resnet18_v1", classes=1000)
    raw.initialize(mx.init.MSRAPrelu())
    raw(mx.nd.zeros((1, 3, 224, 224)))
    raw.save_parameters(str(tmp_path / "m.params"))
    model = load_classifier("resnet18_v1", params=tmp_path / "m.params")
    assert (model.num_classes, model.input_size) == (1000, (3, 224, 224)) and model.folded

    source = load_data(f"folder:{photo_folder}", input_size=model.input_size[1:])
    assert source.classes == ["cat", "cup", "people"] and len(source) == 3
    x, y = source.arrays()
    assert x.shape == (3, 3, 224, 224) and x.dtype == np.float32
    assert y.tolist() == [0, 1, 2]
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert all(img.max() - img.min() > 0.5 for img in x)  # real photographs, not normalised data
    assert all(np.abs(img[0] - img[2]).mean() > 0.01 for img in x)  # colour images: channels differ

    logits = model.predict(x)
    assert logits.shape == (3, 1000) and np.isfinite(logits).all()
    assert np.abs(logits[0] - logits[1]).max() > 0.1 * np.abs(logits).max()  # the logits depend on the photo
    expected = raw(gluoncv_normalise(x, *GLUONCV_IMAGENET))
    assert_close(logits, expected)
    # Feeding the raw net the pixels directly gives something else: the wrapper normalises.
    assert np.abs(raw(mx.nd.array(x)).asnumpy() - expected.asnumpy()).max() > 100 * TOL * max(1, np.abs(logits).max())

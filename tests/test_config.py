"""Model configs (model_configs/*.yaml), their validation and defaults; the import-time version gate."""

from __future__ import annotations

import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
import yaml
from gluoncv.model_zoo import get_model

from gluon_robust import _compat
from gluon_robust.config import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelConfig,
    config_dir,
    family_defaults,
    load_config,
    parse_input_size,
    resolve_config_path,
    save_config,
    with_overrides,
)
from gluon_robust.errors import ConfigError
from gluon_robust.model import load_classifier

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((REPO / "model_configs").glob("*.yaml"))
REQUIRED_KEYS = {"model", "classes", "params", "mean", "std", "bounds", "input_size"}
REFERENCE = "mnist_resnet20"
#: The configs that ship trained weights: the standard and the PGD-AT reference models.
BUNDLED = {REFERENCE, "mnist_resnet20_pgdat"}
NON_REFERENCE = [p for p in CONFIG_FILES if p.stem not in BUNDLED]
# Cheap enough to build, initialise, run and fold in the default test run.
CHEAP = {"cifar_resnet20_v1", "cifar_resnet56_v2"}


def test_the_bundled_configs_are_the_repository_configs():
    assert config_dir().resolve() == (REPO / "model_configs").resolve()
    assert len(CONFIG_FILES) >= 10
    assert BUNDLED <= {p.stem for p in CONFIG_FILES}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_config_loads_with_the_required_keys(path):
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict) and set(raw) == REQUIRED_KEYS
    config = load_config(path)
    assert config.source == str(path)
    channels = config.input_size[0]
    assert len(config.mean) in (1, channels) and len(config.std) == len(config.mean)
    assert config.bounds == (0.0, 1.0)
    if path.stem in BUNDLED:
        assert config.params is not None and Path(config.params).is_file()
        assert config.input_size == (1, 28, 28) and config.classes == 10
    else:
        # Non-reference configs carry the zoo family's GluonCV defaults and no weights.
        assert path.stem == config.model and config.params is None
        family = family_defaults(config.model)
        assert (config.mean, config.std) == (tuple(family["mean"]), tuple(family["std"]))
        assert (config.input_size, config.classes) == (family["input_size"], family["classes"])


@pytest.mark.parametrize("path", NON_REFERENCE, ids=lambda p: p.stem)
def test_non_reference_config_models_take_their_input_size_and_output_their_classes(path):
    """Build the zoo net and infer its output shape symbolically: no weights are allocated."""
    config = load_config(path)
    net = get_model(config.model, classes=config.classes)
    _, out_shapes, _ = net(mx.sym.var("data")).infer_shape(data=(2,) + config.input_size)
    assert out_shapes == [(2, config.classes)]


@pytest.mark.parametrize("name", sorted(CHEAP))
def test_cheap_config_models_build_as_classifiers(name, caplog):
    model = load_classifier(REPO / "model_configs" / f"{name}.yaml")
    config = load_config(name + ".yaml")
    assert (model.num_classes, model.input_size) == (config.classes, config.input_size)
    assert "freshly initialised" in caplog.text
    x = np.random.RandomState(0).rand(2, *config.input_size).astype(np.float32)
    assert model.predict(x).shape == (2, config.classes)


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in NON_REFERENCE if p.stem not in CHEAP], ids=lambda p: p.stem)
def test_big_config_models_build_as_classifiers(path):
    config = load_config(path)
    model = load_classifier(path)
    assert (model.num_classes, model.input_size) == (config.classes, config.input_size)
    x = np.random.RandomState(0).rand(1, *config.input_size).astype(np.float32)
    assert model.predict(x).shape == (1, config.classes)


# ------------------------------------------------------------ resolution
def test_configs_resolve_by_path_or_bare_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository: bundled names still resolve
    bundled = config_dir() / "mnist_resnet20.yaml"
    for name in ("mnist_resnet20", "mnist_resnet20.yaml", "model_configs/mnist_resnet20.yaml"):
        assert resolve_config_path(name) == bundled
    with pytest.raises(ConfigError, match=r"config file not found: nope\.yaml \(bundled configs: .*mnist_resnet20"):
        load_config("nope.yaml")


def test_params_are_resolved_against_the_yaml_directory(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "w.params").write_bytes(b"x")
    path = tmp_path / "cfg" / "m.yaml"
    path.write_text("model: cifar_resnet20_v1\nclasses: 10\nparams: w.params\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(path)
    assert config.params == str((tmp_path / "cfg" / "w.params").resolve())


def test_missing_optional_keys_take_the_family_defaults(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("model: resnet18_v1\n")
    config = load_config(path)
    assert (config.classes, config.input_size) == (1000, (3, 224, 224))
    assert (config.mean, config.std, config.params) == (IMAGENET_MEAN, IMAGENET_STD, None)
    path.write_text("model: cifar_resnet20_v1\nparams:\nmean: 0.5\n")
    config = load_config(path)
    assert (config.classes, config.input_size, config.mean, config.std) == (10, (3, 32, 32), (0.5,), CIFAR_STD)


def test_family_defaults():
    assert family_defaults("cifar_resnet20_v1") == {"mean": CIFAR_MEAN, "std": CIFAR_STD, "input_size": (3, 32, 32),
                                                    "classes": 10}
    assert family_defaults("cifar100_resnet20")["classes"] == 100
    assert family_defaults("inceptionv3")["input_size"] == (3, 299, 299)
    assert family_defaults("ResNet50_v1")["mean"] == IMAGENET_MEAN


@pytest.mark.parametrize(
    "text, message",
    [
        ("- a\n- b\n", "must be a YAML mapping"),
        ("model: resnet18_v1\nbatch_size: 3\n", r"unknown keys \['batch_size'\]"),
        ("classes: 10\n", "has no 'model' key"),
        ("model: resnet18_v1\nclasses: 1\n", "classes must be an integer >= 2"),
        ("model: resnet18_v1\nclasses: ten\n", "classes must be an integer >= 2"),
        ("model: resnet18_v1\nstd: [0.2, 0.0, 0.2]\n", "std must be positive"),
        ("model: resnet18_v1\nmean: [0.1, 0.2]\n", "mean has 2 values but the input has 3 channels"),
        ("model: resnet18_v1\nmean: [a, b, c]\n", "mean must be a number or a list of numbers"),
        ("model: resnet18_v1\nbounds: [1, 0]\n", "bounds must be two numbers low < high"),
        ("model: resnet18_v1\nbounds: [0, 1, 2]\n", "bounds must be two numbers low < high"),
        ("model: resnet18_v1\ninput_size: [1, 2, 3, 4]\n", "input_size must be N"),
        ("model: resnet18_v1\ninput_size: 0\n", "input_size must be N"),
        ("model: [unclosed\n", "cannot read config"),
    ],
)
def test_invalid_configs_are_config_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize(
    "value, expected",
    [(224, (3, 224, 224)), ([32, 40], (3, 32, 40)), ((1, 28, 28), (1, 28, 28)), ("64", (3, 64, 64)), (28.0, (3, 28, 28))],
)
def test_parse_input_size(value, expected):
    assert parse_input_size(value) == expected


@pytest.mark.parametrize("value", [0, -3, [1, 2, 3, 4], [], 3.5, "abc", None])
def test_parse_input_size_rejects(value):
    with pytest.raises(ConfigError, match="input_size must be"):
        parse_input_size(value)


def test_save_config_round_trips_with_relative_params(tmp_path):
    (tmp_path / "w").mkdir()
    weights = tmp_path / "w" / "net.params"
    weights.write_bytes(b"x")
    config = ModelConfig(model="cifar_resnet20_v1", classes=10, params=str(weights), mean=(0.1307,), std=(0.3081,),
                         input_size=(1, 28, 28))
    path = tmp_path / "configs" / "mine.yaml"
    save_config(config, path)
    raw = yaml.safe_load(path.read_text())
    assert raw["params"] == "../w/net.params"
    assert load_config(path) == config
    assert [p.name for p in path.parent.iterdir()] == ["mine.yaml"]  # no temporary file left


def test_with_overrides_validates():
    config = load_config("mnist_resnet20")
    assert with_overrides(config, classes=5, mean=None).classes == 5
    assert with_overrides(config, classes=5).mean == config.mean
    with pytest.raises(ConfigError, match="std must be positive"):
        with_overrides(config, std=-1.0)


# ------------------------------------------------------------ version gate
def test_version_gate_accepts_the_supported_versions():
    _compat.check_versions()


@pytest.mark.parametrize("version", ["1.24.0", "1.26.4", "2.0.0", "1.24.0rc1"])
def test_version_gate_rejects_numpy_1_24_and_later(monkeypatch, version):
    monkeypatch.setattr(np, "__version__", version)
    with pytest.raises(ImportError, match=r"needs numpy<1\.24 .*found numpy " + version.replace(".", r"\.") +
                       r".*pip install 'numpy<1\.24'"):
        _compat.check_versions()


@pytest.mark.parametrize("version", ["2.0.0", "2.0.0b1", "2.1.0"])
def test_version_gate_rejects_mxnet_2(monkeypatch, version):
    monkeypatch.setattr(mx, "__version__", version)
    with pytest.raises(ImportError, match=r"needs MXNet 1\.x .*found mxnet " + version.replace(".", r"\.") +
                       r".*pip install 'mxnet==1\.9\.1'"):
        _compat.check_versions()


def test_version_gate_without_mxnet(monkeypatch):
    monkeypatch.setitem(sys.modules, "mxnet", None)  # makes `import mxnet` raise ImportError
    with pytest.raises(ImportError, match=r"needs MXNet 1\.x: pip install 'gluon_robust\[cpu\]'"):
        _compat.check_versions()


@pytest.mark.parametrize("numpy_version, mxnet_version", [("1.23.5", "1.9.1"), ("1.21.0", "1.8.0.post0")])
def test_version_gate_accepts_older_versions(monkeypatch, numpy_version, mxnet_version):
    monkeypatch.setattr(np, "__version__", numpy_version)
    monkeypatch.setattr(mx, "__version__", mxnet_version)
    _compat.check_versions()

"""Model configs: the YAML files in ``model_configs/`` and their defaults.

A config says everything the model wrapper needs to turn a zoo name into a
classifier that takes pixel inputs::

    model: cifar_resnet20_v1     # gluoncv.model_zoo name
    classes: 10
    params: mnist_resnet20.params   # relative to this file, or empty
    mean: [0.1307]               # one value, or one per channel
    std: [0.3081]
    bounds: [0.0, 1.0]
    input_size: [1, 28, 28]      # C, H, W (a single int means 3 x N x N)
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml

from .errors import ConfigError
from .integrity import refuse_pickle

__all__ = [
    "ModelConfig",
    "load_config",
    "save_config",
    "family_defaults",
    "config_dir",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR_MEAN",
    "CIFAR_STD",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

_KEYS = ("model", "classes", "params", "mean", "std", "bounds", "input_size")


def _floats(name: str, value: Any) -> Tuple[float, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number or a list of numbers, got {value!r}") from None
    if not out:
        raise ConfigError(f"{name} must not be empty")
    if not all(math.isfinite(v) for v in out):
        raise ConfigError(f"{name} must hold finite numbers, got {value!r}")
    return out


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a classifier on pixel-space inputs.

    Attributes
    ----------
    model : str
        A ``gluoncv.model_zoo`` name.
    classes : int
        Number of output classes.
    params : str or None
        Absolute path of a ``.params`` file, or None for pretrained/fresh weights.
    mean, std : tuple of float
        Normalisation applied inside the model: one value or one per channel.
    bounds : tuple of float
        Valid pixel range ``(low, high)``.
    input_size : tuple of int
        ``(C, H, W)`` of one input.
    """

    model: str
    classes: int
    params: Optional[str] = None
    mean: Tuple[float, ...] = (0.0,)
    std: Tuple[float, ...] = (1.0,)
    bounds: Tuple[float, float] = (0.0, 1.0)
    input_size: Tuple[int, int, int] = (3, 224, 224)
    source: Optional[str] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"model must be a zoo model name, got {self.model!r}")
        if isinstance(self.classes, bool) or not isinstance(self.classes, int) or self.classes < 2:
            raise ConfigError(f"classes must be an integer >= 2, got {self.classes!r}")
        object.__setattr__(self, "mean", _floats("mean", self.mean))
        object.__setattr__(self, "std", _floats("std", self.std))
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {list(self.std)}")
        bounds = _floats("bounds", self.bounds)
        if len(bounds) != 2 or not bounds[0] < bounds[1]:
            raise ConfigError(f"bounds must be two numbers low < high, got {self.bounds!r}")
        object.__setattr__(self, "bounds", bounds)
        object.__setattr__(self, "input_size", parse_input_size(self.input_size))
        channels = self.input_size[0]
        for key in ("mean", "std"):
            n = len(getattr(self, key))
            if n not in (1, channels):
                raise ConfigError(f"{key} has {n} values but the input has {channels} channels")

    def to_dict(self, relative_to: Optional[Path] = None) -> Dict[str, Any]:
        """The YAML mapping; ``params`` is written relative to ``relative_to`` when given."""
        out = asdict(self)
        out.pop("source")
        if self.params and relative_to is not None:
            out["params"] = os.path.relpath(self.params, relative_to)
        for key in ("mean", "std", "bounds", "input_size"):
            out[key] = list(out[key])
        return out


def parse_input_size(value: Any) -> Tuple[int, int, int]:
    """Turn ``224``, ``[224, 224]`` or ``[C, H, W]`` into ``(C, H, W)``."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        ints = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"input_size must be N, [H, W] or [C, H, W], got {value!r}") from None
    if any(v < 1 for v in ints) or len(ints) not in (1, 2, 3) or any(float(v) != int(v) for v in values):
        raise ConfigError(f"input_size must be N, [H, W] or [C, H, W] of positive integers, got {value!r}")
    if len(ints) == 1:
        return (3, ints[0], ints[0])
    if len(ints) == 2:
        return (3, ints[0], ints[1])
    return (ints[0], ints[1], ints[2])


def family_defaults(model: str) -> Dict[str, Any]:
    """Normalisation, input size and classes GluonCV uses for a zoo model's family."""
    name = model.lower()
    if name.startswith("cifar"):
        return {"mean": CIFAR_MEAN, "std": CIFAR_STD, "input_size": (3, 32, 32), "classes": 100 if "cifar100" in name else 10}
    size = _INPUT_SIZES.get(name, 299 if "inception" in name or name.startswith("xception") else 224)
    return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (3, size, size), "classes": 1000}


#: ImageNet models GluonCV trains and evaluates at a size other than 224 (Inception and
#: Xception: 299, by the rule in family_defaults).
_INPUT_SIZES = {"nasnet_6_4032": 331, "resnest101": 256, "resnest200": 320, "resnest269": 416}


def config_dir() -> Path:
    """The directory of the bundled model configs."""
    return Path(__file__).resolve().parent / "model_configs"


def resolve_config_path(path_or_name: str | os.PathLike) -> Path:
    """Find a config by path, or by bare name among the bundled configs."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    bundled = config_dir() / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if bundled.is_file() and path.parent in (Path("."), Path("model_configs")):
        return bundled
    known = sorted(p.stem for p in config_dir().glob("*.yaml"))
    raise ConfigError(f"config file not found: {path_or_name} (bundled configs: {', '.join(known)})")


def load_config(path_or_name: str | os.PathLike) -> ModelConfig:
    """Read a model config from YAML.

    Parameters
    ----------
    path_or_name : str or path
        A YAML file, or the name of a bundled config such as ``mnist_resnet20``.

    Returns
    -------
    ModelConfig
        Missing optional keys take the zoo family's defaults; ``params`` becomes
        an absolute path resolved against the YAML file's directory.
    """
    path = resolve_config_path(path_or_name)
    refuse_pickle(path, "config", fix="write the model config as YAML")
    try:
        raw = yaml.safe_load(path.read_text())  # safe_load: no python/* tags, so reading a config runs no code
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping with keys {', '.join(_KEYS)}")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ConfigError(f"config {path} has unknown keys {unknown}; valid keys are {', '.join(_KEYS)}")
    if "model" not in raw:
        raise ConfigError(f"config {path} has no 'model' key")
    if not isinstance(raw["model"], str) or not raw["model"].strip():
        raise ConfigError(f"config {path}: model must be a gluoncv.model_zoo name, got {raw.get('model')!r}")
    if raw.get("params") is not None and not isinstance(raw["params"], str):
        raise ConfigError(f"config {path}: params must be a file path, got {raw['params']!r}")
    values = dict(family_defaults(str(raw["model"])))
    values.update({k: v for k, v in raw.items() if v is not None})
    params = values.get("params")
    if params:
        params_path = Path(params)
        if not params_path.is_absolute():
            params_path = path.parent / params_path
        values["params"] = str(params_path.resolve())
    else:
        values["params"] = None
    return ModelConfig(source=str(path), **values)


def save_config(config: ModelConfig, path: str | os.PathLike) -> None:
    """Write ``config`` as YAML (atomically), with ``params`` relative to the file."""
    from .io import atomic_write_text

    path = Path(path)
    text = yaml.safe_dump(config.to_dict(relative_to=path.resolve().parent), sort_keys=False)
    atomic_write_text(path, text)


def with_overrides(config: ModelConfig, **overrides: Any) -> ModelConfig:
    """A copy of ``config`` with the non-None overrides applied (and validated)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})

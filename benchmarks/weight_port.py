"""Port GluonCV weights to their PyTorch twins by parameter name.

The names on the Gluon side are GluonCV's structural names
(``net._collect_params_with_prefix()``: ``layer1.0.bn1.gamma``); on the torch
side, the ``state_dict`` keys of the twins in ``torch_twins.py``, which use
torchvision's module names where torchvision has the network:

* ``resnet50_v1b`` is torchvision's ``resnet50`` (stride on the 3x3 conv):
  the module names are the same, BatchNorm's ``gamma``/``beta`` become
  ``weight``/``bias``;
* ``cifar_resnet20_v1`` (He et al. 2016, the CIFAR ResNet) has no torchvision
  counterpart: its twin keeps GluonCV's names;
* ``mobilenetv2_1.0`` (Sandler et al. 2018, https://arxiv.org/abs/1801.04381)
  is torchvision's ``mobilenet_v2``, whose blocks nest differently, so every
  name is mapped explicitly (:func:`mobilenetv2_name`). GluonCV's classifier is
  a bias-free 1x1 convolution, torchvision's a ``Linear`` with a bias: the
  weight is reshaped and the bias set to zero.

:func:`port` checks that every Gluon parameter lands on exactly one torch
entry and every torch entry is filled exactly once. This module imports
neither MXNet nor torch, so both environments (and the tests) use it.
"""

from __future__ import annotations

import re
from typing import Dict, Mapping, Tuple

import numpy as np

__all__ = ["ARCHES", "torch_name", "mobilenetv2_name", "zero_filled", "port"]

#: The architectures with a twin.
ARCHES = ("cifar_resnet20_v1", "resnet50_v1b", "mobilenetv2_1.0")

_BN_RENAME = {"gamma": "weight", "beta": "bias", "running_mean": "running_mean", "running_var": "running_var",
              "weight": "weight", "bias": "bias"}

# GluonCV LinearBottleneck positions -> torchvision InvertedResidual positions (inside ``.conv``).
_EXPANDING = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_NOT_EXPANDING = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}  # the first block (expansion 1) has no 1x1 expand


def _leaf(name: str) -> Tuple[str, str]:
    prefix, _, leaf = name.rpartition(".")
    if leaf not in _BN_RENAME:
        raise KeyError(f"unknown parameter kind {leaf!r} in {name!r}")
    return prefix, _BN_RENAME[leaf]


def mobilenetv2_name(name: str) -> str:
    """The torchvision ``mobilenet_v2`` key of a GluonCV ``mobilenetv2_1.0`` parameter."""
    prefix, leaf = _leaf(name)
    if prefix == "features.0":
        return f"features.0.0.{leaf}"
    if prefix == "features.1":
        return f"features.0.1.{leaf}"
    if prefix == "features.20":
        return f"features.18.0.{leaf}"
    if prefix == "features.21":
        return f"features.18.1.{leaf}"
    if prefix == "output.0":
        return f"classifier.1.{leaf}"
    match = re.fullmatch(r"features\.(\d+)\.out\.(\d+)", prefix)
    if match is None:
        raise KeyError(f"no torchvision counterpart for mobilenetv2 parameter {name!r}")
    block = int(match.group(1)) - 2  # GluonCV's blocks are features.3..19, torchvision's features.1..17
    table = _NOT_EXPANDING if block == 1 else _EXPANDING
    if not 1 <= block <= 17 or match.group(2) not in table:
        raise KeyError(f"no torchvision counterpart for mobilenetv2 parameter {name!r}")
    return f"features.{block}.conv.{table[match.group(2)]}.{leaf}"


def torch_name(arch: str, name: str) -> str:
    """The twin's ``state_dict`` key of GluonCV parameter ``name`` of ``arch``."""
    if arch == "mobilenetv2_1.0":
        return mobilenetv2_name(name)
    if arch in ("cifar_resnet20_v1", "resnet50_v1b"):
        prefix, leaf = _leaf(name)
        return f"{prefix}.{leaf}"
    raise KeyError(f"no torch twin for architecture {arch!r}; known: {', '.join(ARCHES)}")


def zero_filled(arch: str) -> Tuple[str, ...]:
    """Twin entries with no Gluon counterpart, set to zero (torchvision's classifier bias)."""
    return ("classifier.1.bias",) if arch == "mobilenetv2_1.0" else ()


def port(arch: str, gluon: Mapping[str, np.ndarray], target: Mapping[str, Tuple[int, ...]]) -> Dict[str, np.ndarray]:
    """Map Gluon arrays onto the twin's entries (name -> shape), checking a one-to-one cover.

    Parameters
    ----------
    arch : str
        One of :data:`ARCHES`.
    gluon : mapping of str to numpy.ndarray
        GluonCV structural name -> value.
    target : mapping of str to tuple of int
        The twin's ``state_dict`` keys (buffers such as ``num_batches_tracked`` left out) -> shapes.

    Returns
    -------
    dict of str to numpy.ndarray
        One float32 array per target key, reshaped where only the layout differs (1x1 conv -> Linear).

    Raises
    ------
    KeyError
        When a Gluon parameter has no target, two land on the same target, or a target stays unfilled.
    ValueError
        When sizes differ.
    """
    out: Dict[str, np.ndarray] = {}
    for name, value in gluon.items():
        key = torch_name(arch, name)
        if key not in target:
            raise KeyError(f"{arch}: {name!r} maps to {key!r}, which the twin does not have")
        if key in out:
            raise KeyError(f"{arch}: two Gluon parameters map to {key!r}")
        shape = tuple(target[key])
        if int(np.prod(shape)) != value.size:
            raise ValueError(f"{arch}: {name!r} has shape {value.shape}, {key!r} has {shape}")
        out[key] = np.ascontiguousarray(value, dtype=np.float32).reshape(shape)
    for key in zero_filled(arch):
        if key in out or key not in target:
            raise KeyError(f"{arch}: zero-filled entry {key!r} is already set or missing")
        out[key] = np.zeros(tuple(target[key]), dtype=np.float32)
    missing = sorted(set(target) - set(out))
    if missing:
        raise KeyError(f"{arch}: {len(missing)} twin entries got no Gluon parameter, e.g. {missing[:3]}")
    return out

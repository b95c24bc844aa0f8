"""GluonCV model-zoo access that works offline and fails clearly.

GluonCV downloads pretrained weights on demand. Offline, the only source is
its cache, ``$MXNET_HOME/models/{name}-{short_hash}.params`` (default
``~/.mxnet/models``), checked by SHA-1. This module looks there itself and
never triggers a download.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import mxnet as mx
from mxnet import gluon

from .errors import ModelError
from .integrity import refuse_pickle

__all__ = [
    "zoo_names", "check_zoo_name", "zoo_task", "classifier_names", "refusal_reason", "REFUSALS", "MKLDNN_REFUSALS",
    "mkldnn_active",
    "pretrained_weights_path", "build_zoo_net", "load_params_into",
]

logger = logging.getLogger(__name__)

CLASSIFICATION = "image classification"

#: The task of every ``gluoncv.model_zoo`` module that defines model constructors, by
#: module path below ``gluoncv.model_zoo``; the longest matching prefix wins. This is the
#: rule that decides which zoo names are image classifiers: GluonCV defines each
#: classifier's constructor in a backbone module (``resnet``, ``mobilenet``, ...), and
#: every other task in a module of its own (``ssd``, ``fcn``, ``action_recognition``, ...).
#: A module not listed here counts as classification, so that a new GluonCV backbone is
#: tried rather than silently skipped.
_MODULE_TASKS: Dict[str, str] = {
    "action_recognition": "action recognition (video clips)",
    "alpha_pose": "pose estimation",
    "center_net": "object detection",
    "danet": "semantic segmentation",
    "deeplabv3": "semantic segmentation",
    "deeplabv3b_plus": "semantic segmentation",
    "fastscnn": "semantic segmentation",
    "fcn": "semantic segmentation",
    "icnet": "semantic segmentation",
    "monodepthv2": "depth estimation",
    "pspnet": "semantic segmentation",
    "rcnn": "object detection",
    "siamrpn": "object tracking",
    "simple_pose": "pose estimation",
    "ssd": "object detection",
    "yolo.yolo3": "object detection",
}

#: Names refused by :func:`build_zoo_net` (so by ``load_classifier`` and ``--model NAME``),
#: as (pattern, one-line reason). ``{twin}`` in a reason is the name without its ``_int8``.
REFUSALS: Tuple[Tuple[str, str], ...] = (
    (r".+_int8", "quantised int8 graph (MKLDNN quantize/requantize ops) with no gradient path; "
                 "use the float twin {twin}"),
)

#: Names refused while MXNet runs its CPU operators through MKLDNN (:func:`mkldnn_active`),
#: as (pattern, one-line reason): the forward pass works but MXNet 1.9's MKLDNN backward
#: cannot give the input gradient. ``tests/test_zoo_matrix.py`` (slow) re-checks that the
#: failure is still there, so an entry is dropped once MXNet fixes it.
MKLDNN_REFUSALS: Tuple[Tuple[str, str], ...] = (
    (r"nasnet_6_4032", "MXNet's MKLDNN backward fails on this network's input gradient ('could not construct "
                       "a sub-memory'); run with MXNET_MKLDNN_ENABLED=0 (slower, but the gradient is exact)"),
)


def mkldnn_active() -> bool:
    """Whether MXNet's CPU operators run through MKLDNN (built in, and not disabled by ``MXNET_MKLDNN_ENABLED=0``)."""
    return mx.runtime.Features().is_enabled("MKLDNN") and os.environ.get("MXNET_MKLDNN_ENABLED", "1") != "0"


def zoo_names() -> List[str]:
    """Every name ``gluoncv.model_zoo.get_model`` accepts."""
    from gluoncv.model_zoo import get_model_list

    return list(get_model_list())


def close_matches(name: str, candidates: List[str], n: int = 5) -> str:
    """A human-readable list of the candidates closest to ``name``."""
    matches = difflib.get_close_matches(name.lower(), candidates, n=n, cutoff=0.5)
    return ", ".join(matches) if matches else "none close; see gluoncv.model_zoo.get_model_list()"


def check_zoo_name(name: str) -> str:
    """Return the lower-cased zoo name, or raise a ModelError listing close matches."""
    names = zoo_names()
    key = name.lower()
    if key not in names:
        raise ModelError(f"unknown model {name!r}; close matches: {close_matches(key, names)}")
    return key


def zoo_task(name: str) -> str:
    """The task of a zoo model: ``"image classification"`` or what else it does.

    The task comes from the GluonCV module that defines the model's constructor (see
    ``_MODULE_TASKS``); ``hrnet_*_s`` are HRNetV2 segmentation nets and a ``_int8``
    model has the task of its float twin.
    """
    from gluoncv.model_zoo import model_zoo

    key = check_zoo_name(name)
    if key.endswith("_int8") and key[: -len("_int8")] in model_zoo._models:
        return zoo_task(key[: -len("_int8")])
    if re.fullmatch(r"hrnet_.*_s", key):
        return "semantic segmentation"
    module = getattr(model_zoo._models[key], "__module__", "") or ""
    module = module[len("gluoncv.model_zoo."):] if module.startswith("gluoncv.model_zoo.") else module
    matches = [prefix for prefix in _MODULE_TASKS if module == prefix or module.startswith(prefix + ".")]
    return _MODULE_TASKS[max(matches, key=len)] if matches else CLASSIFICATION


def classifier_names() -> List[str]:
    """Every zoo name whose task is image classification, in GluonCV's order."""
    return [name for name in zoo_names() if zoo_task(name) == CLASSIFICATION]


def refusal_reason(name: str) -> Optional[str]:
    """Why ``name`` cannot be used as a classifier to attack, or None when it can.

    A model is refused when its task is not image classification, or when it matches
    a pattern of :data:`REFUSALS`, or of :data:`MKLDNN_REFUSALS` while MKLDNN is active.
    """
    key = check_zoo_name(name)
    task = zoo_task(key)
    if task != CLASSIFICATION:
        return f"{key} is a model for {task}, not an image classifier"
    for pattern, reason in REFUSALS:
        if re.fullmatch(pattern, key):
            return reason.format(twin=re.sub(r"_int8$", "", key))
    if mkldnn_active():
        for pattern, reason in MKLDNN_REFUSALS:
            if re.fullmatch(pattern, key):
                return reason
    return None


def _cache_root() -> Path:
    if "MXNET_HOME" in os.environ:
        return Path(os.environ["MXNET_HOME"]) / "models"
    return Path("~/.mxnet/models").expanduser()


def pretrained_weights_path(name: str) -> Path:
    """Path of the cached pretrained weights for a zoo model, checked by SHA-1.

    Raises
    ------
    ModelError
        If GluonCV publishes no weights for ``name``, or they are not in the
        cache (the message names the expected file and the ``--params``
        alternative), or the cached file is corrupt.
    """
    from gluoncv.model_zoo import model_store
    from gluoncv.utils import check_sha1

    key = check_zoo_name(name)
    sha1 = model_store._model_sha1.get(key)  # GluonCV's own table of published weights
    if sha1 is None:
        raise ModelError(f"GluonCV publishes no pretrained weights for {key!r}; pass --params FILE instead")
    path = _cache_root() / f"{key}-{sha1[:8]}.params"
    if not path.is_file():
        raise ModelError(
            f"pretrained weights for {key!r} are not cached and cannot be downloaded offline: expected {path} "
            f"(SHA-1 {sha1}); copy the file there (or set MXNET_HOME), or pass --params FILE"
        )
    if not check_sha1(str(path), sha1):
        raise ModelError(f"cached weights {path} fail their SHA-1 check (expected {sha1}); replace the file")
    return path


def build_zoo_net(name: str, classes: Optional[int], pretrained: bool, ctx: mx.Context) -> gluon.HybridBlock:
    """Construct a zoo network, with cached pretrained weights or uninitialised.

    Parameters
    ----------
    name : str
        A ``gluoncv.model_zoo`` name.
    classes : int, optional
        Number of output classes; None keeps the model's default.
    pretrained : bool
        Load GluonCV's published weights from the offline cache.
    ctx : mxnet.Context
        Where the weights are loaded.

    Returns
    -------
    mxnet.gluon.HybridBlock
        Initialised when ``pretrained``; otherwise not yet initialised.

    Raises
    ------
    ModelError
        For an unknown or refused name (see :func:`refusal_reason`), missing weights,
        or a class count the constructor does not take.
    """
    from gluoncv.model_zoo import get_model, model_zoo

    key = check_zoo_name(name)
    reason = refusal_reason(key)
    if reason is not None:
        raise ModelError(f"model {key!r} is not supported: {reason}")
    weights = pretrained_weights_path(key) if pretrained else None
    # HRNet's constructors take num_classes and silently ignore classes.
    module = getattr(model_zoo._models[key], "__module__", "")
    kwargs = {} if classes is None else {"num_classes" if module.endswith(".hrnet") else "classes": classes}
    # The pruned ResNets take every layer's shape, the 1000-way head too, from GluonCV's table.
    if ".pruned_resnet." in module and classes not in (None, 1000):
        raise ModelError(f"model {key!r} is a pruned ImageNet net with a fixed 1000-class head; classes={classes} "
                         "cannot be built")
    try:
        net = get_model(key, pretrained=False, **kwargs)
    except TypeError as err:
        raise ModelError(f"model {key!r} cannot be built as a classifier with {kwargs}: {err}") from None
    if weights is not None:
        load_params_into(net, weights, ctx)
    return net


def _to_net_prefix(params: dict, net: gluon.Block) -> dict:
    """Rename exported parameters to ``net``'s name prefix.

    Exported names carry the exporting block's automatic prefix (``cifarresnetv10_``),
    which depends on how many blocks of that class the exporting process had
    created; a net of the same architecture built here may be ``cifarresnetv13_``.
    """
    prefix = getattr(net, "prefix", "")
    auto = re.compile(rf"^{re.escape(type(net).__name__.lower())}\d+_")
    if not prefix or not auto.fullmatch(prefix) or any(k.startswith(prefix) for k in params):
        return params
    if not all(auto.match(k) for k in params):
        return params
    return {auto.sub(lambda _: prefix, k, count=1): v for k, v in params.items()}


def load_params_into(net: gluon.Block, path: str | os.PathLike, ctx: mx.Context) -> None:
    """Load a ``.params`` file into ``net``, turning every failure into one clear line.

    Both formats are accepted: ``save_parameters`` (structural names) and
    ``export`` (``arg:``/``aux:`` prefixed names).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"params file not found: {path}")
    refuse_pickle(path, "params file", ModelError, fix="pass a .params file written by save_parameters or export")
    try:
        loaded = mx.nd.load(str(path))
    except mx.base.MXNetError:
        raise ModelError(f"cannot read params file {path}: not a valid MXNet .params file") from None
    if not isinstance(loaded, dict) or not loaded:
        raise ModelError(f"params file {path} holds no named parameters")
    try:
        if any(k.startswith(("arg:", "aux:")) for k in loaded):
            stripped = _to_net_prefix({k.split(":", 1)[1]: v for k, v in loaded.items()}, net)
            net.collect_params().load_dict(stripped, ctx=ctx)
        else:
            net.load_parameters(str(path), ctx=ctx)
    except (AssertionError, ValueError, KeyError, mx.base.MXNetError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"params file {path} does not fit the model: {detail}") from None

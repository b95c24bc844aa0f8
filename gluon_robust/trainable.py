"""Classifiers to train: BatchNorm kept, parameters trainable, and the guard against training a frozen one.

:func:`trainable_classifier` is the training counterpart of
:func:`~gluon_robust.model.load_classifier`; :func:`replace_head` swaps a
network's last layer for fine-tuning; :func:`check_trainable` refuses a model
built for evaluation.
"""

from __future__ import annotations

import logging
import os
from typing import Any, List, Optional, Sequence, Tuple

import mxnet as mx
from mxnet import gluon

from .classifier import Classifier
from .config import parse_input_size
from .data.labels import LabelsSpec
from .errors import ModelError
from .model_sources import ModelSource, _check_finite_weights, _class_scores, _resolve, _wrap
from .validation import InvalidValue, check_int

__all__ = ["trainable_classifier", "replace_head", "check_trainable", "HEAD_ATTRIBUTES", "FROZEN_MESSAGE"]

logger = logging.getLogger("gluon_robust.model")


#: Attributes under which GluonCV classification networks keep their last (class-score) layer, in lookup order.
HEAD_ATTRIBUTES = ("output", "fc", "classifier")


#: What a frozen evaluation model passed to training gets told.
FROZEN_MESSAGE = (
    "this model was loaded for evaluation (BatchNorm folded, parameters frozen) and cannot be trained; "
    "build a trainable one with gluon_robust.trainable_classifier(...)"
)


def check_trainable(model: Any) -> None:
    """Refuse a model built for evaluation before a training step touches it.

    A :func:`load_classifier` model has BatchNorm folded into constants and
    every parameter frozen (``grad_req='null'``); ``gluon.Trainer`` and
    ``backward`` would fail on it with MXNet errors that do not say why.

    Raises
    ------
    ModelError
        If ``model`` (or the classifier a defence wraps) is frozen or folded.
    """
    inner = getattr(model, "model", None)  # a DefendedClassifier wraps the classifier it defends
    for block in (model, inner):
        if block is None:
            continue
        if getattr(block, "frozen", False) or getattr(block, "folded", False) or hasattr(
            getattr(block, "net", None), "fold_report"
        ):
            raise ModelError(FROZEN_MESSAGE)


def replace_head(net: gluon.HybridBlock, classes: int, *, ctx: Optional[mx.Context] = None) -> str:
    """Replace a classification network's last layer by a fresh ``classes``-way one, for fine-tuning.

    The layer found first among :data:`HEAD_ATTRIBUTES` (``net.output`` for
    most GluonCV classifiers, ``net.fc`` for ResNet-V1b, ResNeSt and Xception,
    ``net.classifier`` elsewhere) must be a ``Dense`` layer; it is replaced by
    a new ``nn.Dense(classes)`` created under the network's name scope and
    initialised with ``Xavier()`` (drawn from MXNet's global generator at the
    first forward pass: seed it with ``mx.random.seed`` for a reproducible head).

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
        A (typically pretrained) classification network.
    classes : int
        Number of classes of the new head (at least 2).
    ctx : mxnet.Context, optional
        Where the new head's parameters live; default CPU.

    Returns
    -------
    str
        The attribute that was replaced.

    Raises
    ------
    ModelError
        If the network has no Dense head under a known attribute (e.g.
        SqueezeNet and MobileNetV2/V3 end with a 1x1 convolution).

    Examples
    --------
    >>> net = gluoncv.model_zoo.get_model("resnet18_v1", pretrained=True)
    >>> replace_head(net, 5)
    'output'
    """
    classes = check_int("new_classes", classes, minimum=2)
    for attribute in HEAD_ATTRIBUTES:
        layer = getattr(net, attribute, None)
        if isinstance(layer, gluon.nn.Dense):
            with net.name_scope():
                head = gluon.nn.Dense(classes)
            setattr(net, attribute, head)
            head.initialize(mx.init.Xavier(), ctx=ctx if ctx is not None else mx.cpu())
            logger.info("replaced %s.%s by a fresh %d-class Dense layer", type(net).__name__, attribute, classes)
            return attribute
    found = {a: type(getattr(net, a)).__name__ for a in HEAD_ATTRIBUTES if getattr(net, a, None) is not None}
    raise ModelError(
        f"cannot replace the head of {type(net).__name__}: it has no Dense layer under "
        f"{', '.join(HEAD_ATTRIBUTES)} (found {found or 'none'}); replace its last layer yourself and pass the block"
    )


def _context_list(ctx: Optional[mx.Context | Sequence[mx.Context]]) -> List[mx.Context]:
    if ctx is None:
        return [mx.cpu()]
    contexts = [ctx] if isinstance(ctx, mx.Context) else list(ctx)
    if not contexts or not all(isinstance(c, mx.Context) for c in contexts):
        raise InvalidValue("ctx", ctx, "an mxnet Context or a non-empty list of them")
    return contexts


def trainable_classifier(
    source: ModelSource,
    *,
    params: Optional[str | os.PathLike] = None,
    pretrained: bool = False,
    classes: Optional[int] = None,
    new_classes: Optional[int] = None,
    mean: Optional[Sequence[float] | float] = None,
    std: Optional[Sequence[float] | float] = None,
    bounds: Optional[Tuple[float, float]] = None,
    input_size: Optional[int | Sequence[int]] = None,
    ctx: Optional[mx.Context | Sequence[mx.Context]] = None,
    labels: Optional[LabelsSpec] = None,
    seed: int = 0,
    hybridize: bool = True,
) -> Classifier:
    """Build a :class:`Classifier` to *train*: BatchNorm kept, parameters trainable, normalisation inside.

    The training counterpart of :func:`load_classifier`: the same sources and
    the same defaults (mean, std, bounds and input size from the config or
    the zoo family), but nothing is folded or frozen, so the result goes
    straight into ``gluon.Trainer(model.collect_params(), ...)``, a training
    method (:func:`gluon_robust.training.get_method`) or
    :func:`~gluon_robust.training.loop.train_adversarial`. ``gluon-robust
    train`` builds its model with it.

    Parameters
    ----------
    source : str, path, ModelConfig or mxnet.gluon.HybridBlock
        A ``gluoncv.model_zoo`` name, a config YAML or bundled config name, an
        exported ``net-symbol.json``, or a Gluon block (its uninitialised
        parameters are initialised).
    params : str or path, optional
        Starting weights (``.params``); overrides the config's.
    pretrained : bool
        Start from GluonCV's published weights (offline cache).
    classes : int, optional
        Number of classes the network is built with (default: the config's
        or the zoo family's).
    new_classes : int, optional
        Fine-tuning: replace the network's last layer by a fresh
        ``new_classes``-way Dense layer (see :func:`replace_head`) after the
        weights are loaded.
    mean, std, bounds, input_size, labels
        As for :func:`load_classifier`.
    ctx : mxnet.Context or list of them, optional
        Device(s) the parameters live on; default CPU. The first is
        ``model.ctx``; a list prepares data-parallel training with
        ``split_and_load``.
    seed : int
        Seeds MXNet's generator before any weight is drawn (fresh weights and
        the new head), so that the same call gives the same model.
    hybridize : bool
        Hybridise the classifier (``static_alloc``).

    Returns
    -------
    Classifier
        With ``folded = False`` and ``frozen = False``; every parameter that
        has a gradient has ``grad_req='write'``.

    Raises
    ------
    ModelError, ConfigError
        For an unknown name, missing or unfitting weights, a wrong class
        count or a head that cannot be replaced.

    Examples
    --------
    Fine-tune a pretrained ImageNet network on a 5-class image folder:

    >>> model = trainable_classifier("resnet18_v1", pretrained=True, new_classes=5)
    >>> trainer = gluon.Trainer(model.collect_params(), "adam", {"learning_rate": 1e-4})
    """
    contexts = _context_list(ctx)
    seed = check_int("seed", seed, minimum=0, maximum=2 ** 32 - 1)
    if new_classes is not None:
        new_classes = check_int("new_classes", new_classes, minimum=2)
    if isinstance(source, str) and not source.strip():
        raise ModelError("no model given: pass a zoo name, a config file, a symbol file or a block")
    mx.random.seed(seed)
    net, defaults = _resolve(source, classes, str(params) if params else None, pretrained, contexts[0],
                             initializer=mx.init.Xavier(magnitude=2.0))
    if new_classes is not None:
        replace_head(net, new_classes, ctx=contexts[0])
    _check_finite_weights(net, params)
    size = parse_input_size(input_size) if input_size is not None else defaults.get("input_size")
    net, actual = _class_scores(net, size, new_classes or classes or defaults.get("classes"), contexts[0])
    net.collect_params().setattr("grad_req", "write")  # BatchNorm running statistics stay 'null'
    model = _wrap(net, actual, size, defaults, mean=mean, std=std, bounds=bounds, labels=labels, ctx=contexts[0])
    _plain_layout(model, contexts)
    if hybridize:
        model.hybridize(static_alloc=True)
    logger.info("trainable model: %s", model.describe())
    return model


def _plain_layout(block: gluon.Block, contexts: Sequence[mx.Context]) -> None:
    """Put every initialised parameter of ``block`` on ``contexts`` as a fresh array in MXNet's default layout.

    The forward pass that infers the number of classes runs in inference
    mode, where MKLDNN reorders convolution weights in place into its blocked
    layout. Such an array trains locally but cannot be broadcast through a
    distributed kvstore (the server never stores it: "init N first"), so a
    trainable model hands its optimizer plain copies.
    """
    for param in block.collect_params().values():
        if param._data is None:  # noqa: SLF001 -- deferred, drawn later in the default layout
            continue
        values = param.data(param.list_ctx()[0]).asnumpy()
        param.reset_ctx(list(contexts))
        param.set_data(mx.nd.array(values, ctx=contexts[0], dtype=param.dtype))

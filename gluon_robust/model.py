"""Load a classifier for evaluation; the public face of the model layer.

A :class:`Classifier` takes pixel-space inputs (float32, NCHW, inside
``bounds``), normalises them with a per-channel mean and std and calls the
network. Because normalisation lives inside the model, an epsilon is always in
pixel units: ``8/255`` means eight grey levels.

:func:`load_classifier` builds one from a GluonCV zoo name, a model config
YAML, any Gluon ``HybridBlock`` or an exported ``net-symbol.json``, and by
default folds BatchNorm away (see :mod:`gluon_robust.folding`) so that input
gradients are correct and fast. The class lives in :mod:`gluon_robust.classifier`,
the model sources in :mod:`gluon_robust.model_sources` and the training
counterpart in :mod:`gluon_robust.trainable`; their names are re-exported here.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence, Tuple

import mxnet as mx

from .classifier import Classifier, FirstOutput, predict_in_chunks
from .config import parse_input_size
from .data.labels import LabelsSpec
from .errors import ModelError
from .folding import fold_batchnorm
from .model_sources import ModelSource, _check_finite_weights, _class_scores, _resolve, _wrap
from .trainable import (  # noqa: F401 -- FROZEN_MESSAGE re-exported
    FROZEN_MESSAGE, HEAD_ATTRIBUTES, check_trainable, replace_head, trainable_classifier,
)

__all__ = [
    "Classifier", "FirstOutput", "load_classifier", "trainable_classifier", "replace_head", "check_trainable",
    "HEAD_ATTRIBUTES", "ModelSource", "predict_in_chunks",
]

logger = logging.getLogger(__name__)


def load_classifier(
    source: ModelSource,
    *,
    params: Optional[str | os.PathLike] = None,
    pretrained: bool = False,
    classes: Optional[int] = None,
    mean: Optional[Sequence[float] | float] = None,
    std: Optional[Sequence[float] | float] = None,
    bounds: Optional[Tuple[float, float]] = None,
    input_size: Optional[int | Sequence[int]] = None,
    ctx: Optional[mx.Context] = None,
    fold: bool = True,
    hybridize: bool = True,
    labels: Optional[LabelsSpec] = None,
) -> Classifier:
    """Build a :class:`Classifier` on pixel inputs from any model source.

    Parameters
    ----------
    source : str, path, ModelConfig or mxnet.gluon.HybridBlock
        A ``gluoncv.model_zoo`` name (``"resnet50_v1"``), a config YAML (or the
        name of a bundled one, ``"mnist_resnet20"``), an exported
        ``net-symbol.json``, or an initialised Gluon block.
    params : str or path, optional
        A ``.params`` file to load (``save_parameters`` or ``export`` format).
        Overrides the config's ``params``.
    pretrained : bool
        Use GluonCV's published weights from the offline cache.
    classes : int, optional
        Number of classes; checked against the model's actual output.
    mean, std : float or sequence of float, optional
        Normalisation; defaults come from the config or the zoo family
        (ImageNet or CIFAR statistics), else 0 and 1.
    bounds : tuple of float, optional
        Pixel range, default ``(0, 1)``.
    input_size : int or sequence of int, optional
        ``(C, H, W)``; needed for user blocks whose BatchNorm cannot all be folded.
    ctx : mxnet.Context, optional
        Device; default CPU.
    fold : bool
        Fold BatchNorm away (exact; correct and fast input gradients). With
        ``False`` the network is used as it is, and MXNet's eval-mode BatchNorm
        gradients are wrong.
    hybridize : bool
        Hybridise the classifier.
    labels : ClassTable, sequence of str or path, optional
        The name of each output: a :class:`~gluon_robust.data.labels.ClassTable`,
        a list of names, or a JSON/text file of them (see
        :func:`~gluon_robust.data.labels.load_class_table`); its length must
        be the number of outputs. Default for a zoo name: the family's table
        (ImageNet for 1,000 outputs, CIFAR-10 for a ``cifar_*`` net with 10);
        for a config file, a block or a symbol file: none.

    Returns
    -------
    Classifier
        In eval mode, with every parameter frozen (``grad_req='null'``).

    Raises
    ------
    ModelError, ConfigError
        For an unknown name, missing or unfitting weights, or a wrong class count.

    Examples
    --------
    >>> model = load_classifier("mnist_resnet20")
    >>> model = load_classifier("cifar_resnet20_v1", params="net.params", ctx=mx.gpu(0))
    """
    ctx = ctx if ctx is not None else mx.cpu()
    if isinstance(source, str) and not source.strip():
        raise ModelError("no model given: pass a zoo name, a config file, a symbol file or a block")
    net, defaults = _resolve(source, classes, str(params) if params else None, pretrained, ctx)
    _check_finite_weights(net, params)
    size = parse_input_size(input_size) if input_size is not None else defaults.get("input_size")
    net, actual = _class_scores(net, size, classes or defaults.get("classes"), ctx)
    if fold:
        net = fold_batchnorm(net, input_shape=(1,) + tuple(size) if size else None, ctx=ctx, hybridize=False)
    else:
        logger.warning("BatchNorm not folded: MXNet 1.9.1 computes wrong eval-mode input gradients through it")
        net.collect_params().setattr("grad_req", "null")
    model = _wrap(net, actual, size, defaults, mean=mean, std=std, bounds=bounds, labels=labels, ctx=ctx)
    model.folded = fold
    model.frozen = True
    model.mode_free = fold and net.fold_report.mode_free
    if hybridize:
        model.hybridize(static_alloc=True)
    logger.info("model: %s", model.describe())
    return model

"""BatchNorm during adversarial training: which statistics the attack uses, and who updates them.

What MXNet 1.9.1 does (checked on CPU with MKLDNN, ``tests/test_training_batchnorm.py``):

* **Running statistics are updated in the backward pass**, not in the forward
  pass. A train-mode forward alone (``autograd.record(train_mode=True)``,
  ``autograd.train_mode()`` or ``autograd.pause(train_mode=True)``) leaves
  ``running_mean``/``running_var`` untouched; the backward of a train-mode
  graph, including ``autograd.grad`` with respect to the *input* only,
  updates them (``running = momentum * running + (1 - momentum) * batch``).
  So a training-time attack of K steps moves the running statistics K times
  towards the statistics of its intermediate iterates, and there is no mode
  in which an attack (which needs a backward pass) can run in train mode
  without updating them. An eval-mode backward also rewrites them (by float
  rounding only, about 1e-7). What works on every backend is to snapshot the
  statistics before the attack and copy them back afterwards
  (:func:`preserve_running_stats`, about 4 ms for a ResNet-20); copying into
  the same arrays keeps hybridised ``static_alloc`` graphs valid.
* **Eval-mode input gradients through BatchNorm are wrong** (the backward uses
  batch statistics while the forward used the running ones) and about six
  times slower; after an eval-mode forward, MKLDNN's max-pooling backward is
  wrong too. An attack must therefore never record in eval mode.
* Training forwards in the user's ``autograd.record()`` update the running
  statistics in the user's ``backward``, once per train-mode forward that the
  loss depends on (twice per step for TRADES, MART, or PGD-AT with ``mix > 0``,
  as in the PyTorch reference implementations). That happens after the helper
  returns, so the helper leaves it to the loop; :func:`recalibrate_batchnorm`
  re-estimates the statistics on clean data when they should describe clean
  inputs only.

The two attack modes a training method offers (``attack_bn``):

``"train"`` (default, the common choice)
    The attack differentiates the train-mode function (batch statistics) and
    records in train mode; running statistics are restored afterwards unless
    ``attack_updates_stats=True``.
``"eval"``
    The attack differentiates the eval-mode function exactly: each call folds
    the current weights and running statistics into a BatchNorm-free copy
    (:class:`EvalMirror`, tens of milliseconds for a ResNet-20) and records on
    it in train mode, which is exact and avoids both MXNet bugs. It never
    touches the running statistics.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from ..errors import ConfigError
from ..folding import block_to_symbol, fold_symbol, symbol_block
from ..model import Classifier

__all__ = [
    "ATTACK_BN_MODES", "running_stats", "preserve_running_stats", "EvalMirror", "folded_copy", "recalibrate_batchnorm",
]

logger = logging.getLogger(__name__)

#: Values of ``attack_bn``.
ATTACK_BN_MODES = ("train", "eval")
_STAT_SUFFIXES = ("running_mean", "running_var", "moving_mean", "moving_var")


def running_stats(model: gluon.Block) -> List[gluon.Parameter]:
    """The BatchNorm running-statistics parameters of ``model`` (Gluon and SymbolBlock names)."""
    return [
        p for p in model.collect_params().values()
        if p.grad_req == "null" and p.name.endswith(_STAT_SUFFIXES)
    ]


@contextlib.contextmanager
def preserve_running_stats(model: gluon.Block, ctx: mx.Context, enabled: bool = True) -> Iterator[None]:
    """Copy the running statistics on ``ctx`` back to their values on entry when the block exits.

    The copies are asynchronous engine operations ordered after every pending
    backward pass, so statistics written by those passes are overwritten.
    """
    params = running_stats(model) if enabled else []
    saved = [p.data(ctx).copy() for p in params]
    try:
        yield
    finally:
        for p, value in zip(params, saved):
            p.data(ctx)[:] = value


def _param_values(model: gluon.Block, ctx: mx.Context) -> Dict[str, nd.NDArray]:
    values = {}
    for p in model.collect_params().values():
        values[p.name] = p.data(ctx if ctx in p.list_ctx() else p.list_ctx()[0])
    return values


def folded_copy(model: gluon.HybridBlock, ctx: mx.Context, input_shape: Sequence[int]) -> Classifier:
    """A BatchNorm-free copy of ``model`` (normalisation included) computing its eval-mode function.

    Parameters
    ----------
    model : HybridBlock
        A :class:`~gluon_robust.model.Classifier` or any initialised block on pixel inputs.
    ctx : mxnet.Context
        Where the copy lives.
    input_shape : sequence of int
        Shape of one input batch, e.g. ``(1, 1, 28, 28)``.

    Returns
    -------
    Classifier
        Frozen and hybridised, with the model's ``bounds``, ``num_classes``
        and ``input_size`` and ``mode_free`` set, ready for
        :mod:`gluon_robust.attacks` and :mod:`gluon_robust.evaluation`.
    """
    symbol, _ = block_to_symbol(model)
    folded, values, report = fold_symbol(symbol, _param_values(model, ctx), input_shape=tuple(input_shape))
    block = symbol_block(folded, values, ctx, hybridize=False)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        with autograd.pause():
            num_classes = int(block(nd.zeros(tuple(input_shape), ctx=ctx)).shape[1])
    copy = Classifier(
        block, num_classes=num_classes, input_size=getattr(model, "input_size", None) or tuple(input_shape[1:]),
        bounds=tuple(getattr(model, "bounds", (0.0, 1.0))), ctx=ctx, arch=getattr(model, "arch", None),
    )
    copy.folded = True
    copy.mode_free = report.mode_free
    copy.hybridize(static_alloc=True)
    return copy


class EvalMirror:
    """An eval-mode, BatchNorm-free mirror of a model under training, refreshed on every use.

    The symbol graph is traced once; each :meth:`get` folds the model's
    current weights and running statistics into it (about 40 ms for a
    ResNet-20 on a CPU) and copies them into a persistent, hybridised block
    per context.
    """

    def __init__(self, model: gluon.HybridBlock) -> None:
        self.model = model
        self._symbol: Optional[mx.sym.Symbol] = None
        self._blocks: Dict[str, gluon.HybridBlock] = {}

    def get(self, ctx: mx.Context, input_shape: Sequence[int]) -> gluon.HybridBlock:
        """The mirror on ``ctx`` with the model's current values."""
        key = str(ctx)
        if key not in self._blocks:
            self._blocks[key] = folded_copy(self.model, ctx, (1,) + tuple(input_shape[1:]))
            if self._symbol is None:
                self._symbol, _ = block_to_symbol(self.model)
            return self._blocks[key]
        _, values, _ = fold_symbol(self._symbol, _param_values(self.model, ctx), input_shape=(1,) + tuple(input_shape[1:]))
        for param in self._blocks[key].net.collect_params().values():
            param.data(ctx)[:] = values[param.name].as_in_context(ctx)
        return self._blocks[key]


def recalibrate_batchnorm(
    model: gluon.HybridBlock,
    batches: Sequence[np.ndarray],
    ctx: Optional[Sequence[mx.Context]] = None,
) -> int:
    """Replace every BatchNorm's running statistics by their exact values on clean batches.

    The model runs forward in train mode (each BatchNorm normalises with its
    batch statistics, as in training; MXNet updates nothing without a
    backward pass) and the statistics become the average over ``batches`` of
    the per-batch mean and variance of each BatchNorm input ("precise BN",
    Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm",
    https://arxiv.org/abs/2105.07576), so they describe clean inputs however
    the training batches were perturbed. Only Gluon ``nn.BatchNorm`` children
    are handled; the model runs imperatively for the duration and is
    hybridised again (``static_alloc=True``) afterwards.

    Parameters
    ----------
    model : HybridBlock
        The model under training (a Classifier or any block with BatchNorm children).
    batches : sequence of numpy.ndarray
        Clean input batches (pixel space).
    ctx : sequence of mxnet.Context, optional
        Contexts whose copies of the statistics are replaced; default all.

    Returns
    -------
    int
        The number of BatchNorm layers recalibrated.
    """
    layers: List[gluon.nn.BatchNorm] = []

    def collect(block: gluon.Block) -> None:
        for child in block._children.values():
            if isinstance(child, gluon.nn.BatchNorm):
                layers.append(child)
            collect(child)

    collect(model)
    if not layers:
        return 0
    if not batches:
        raise ConfigError("recalibrate_batchnorm needs at least one batch, got none")
    sums: Dict[int, List[np.ndarray]] = {id(layer): [] for layer in layers}
    hybridised = getattr(model, "_active", False)
    model.hybridize(False)
    handles = []
    for layer in layers:
        axis = layer._kwargs.get("axis", 1)

        def hook(block: gluon.Block, inputs: Tuple[nd.NDArray, ...], _axis: int = axis) -> None:
            data = inputs[0]
            axes = tuple(a for a in range(data.ndim) if a != _axis)
            mean = data.mean(axis=axes)
            count = data.size // data.shape[_axis]
            shape = [1] * data.ndim
            shape[_axis] = -1
            var = ((data - mean.reshape(shape)) ** 2).sum(axis=axes) / count  # biased, as MXNet's update
            sums[id(block)].append(np.stack([mean.asnumpy(), var.asnumpy()]))

        handles.append(layer.register_forward_pre_hook(hook))
    first = next(iter(model.collect_params().values())).list_ctx()[0]
    try:
        with autograd.pause(train_mode=True):
            for batch in batches:
                model(nd.array(batch, ctx=first, dtype="float32")).wait_to_read()
    finally:
        for handle in handles:
            handle.detach()
        if hybridised:
            model.hybridize(static_alloc=True)
    for layer in layers:
        mean, var = np.mean(sums[id(layer)], axis=0)
        for name, value in (("running_mean", mean), ("running_var", var)):
            param = getattr(layer, name)
            for c in ctx or param.list_ctx():
                param.data(c)[:] = nd.array(value, ctx=c)
    logger.info("recalibrated %d BatchNorm layers on %d clean batches", len(layers), len(batches))
    return len(layers)

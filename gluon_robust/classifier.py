"""The model wrapper: the one place where preprocessing happens.

A :class:`Classifier` takes pixel-space inputs (float32, NCHW, inside
``bounds``), normalises them with a per-channel mean and std and calls the
network. Because normalisation lives inside the model, an epsilon is always in
pixel units: ``8/255`` means eight grey levels. :func:`~gluon_robust.model.load_classifier`
builds one from any model source.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import gluon

from .config import parse_input_size
from .data.labels import ClassTable
from .errors import ConfigError

__all__ = ["Classifier", "FirstOutput", "predict_in_chunks"]


def _as_channel_array(values: Sequence[float] | float, channels: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if arr.size not in (1, channels):
        raise ConfigError(f"{name} has {arr.size} values but the input has {channels} channels")
    if name == "std" and np.any(arr <= 0):
        raise ConfigError(f"std must be positive, got {arr.tolist()}")
    return arr.reshape(1, -1, 1, 1)


class Classifier(gluon.HybridBlock):
    """A classifier on pixel-space inputs, with normalisation inside.

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
        The initialised network; it sees normalised inputs.
    num_classes : int
        Number of output scores.
    input_size : tuple of int, optional
        ``(C, H, W)`` of one input, when known.
    mean, std : float or sequence of float
        Normalisation ``(x - mean) / std``: one value or one per channel.
    bounds : tuple of float
        Valid pixel range of the inputs, ``(low, high)``.
    ctx : mxnet.Context
        Where the network's parameters live and inputs are expected.
    arch : str, optional
        Architecture name for logs and reports; defaults to the net's class name.

    Attributes
    ----------
    folded : bool
        Whether BatchNorm was folded away (set by :func:`load_classifier`).
    frozen : bool
        Whether the classifier was built for evaluation only (every parameter
        ``grad_req='null'``; set by :func:`load_classifier`). Training helpers
        refuse it (see :func:`check_trainable`).
    mode_free : bool
        Whether the network computes the same function in train and eval mode
        (folded, with no BatchNorm or Dropout left); attacks then record
        gradients in train mode, see :func:`gluon_robust.attacks.base.gradient_recording`.
    class_table : ClassTable or None
        The name (and synset) of each output, when known (set by
        :func:`load_classifier`); see :mod:`gluon_robust.data.labels`.
    """

    def __init__(
        self,
        net: gluon.HybridBlock,
        *,
        num_classes: int,
        input_size: Optional[Sequence[int]] = None,
        mean: Sequence[float] | float = 0.0,
        std: Sequence[float] | float = 1.0,
        bounds: Tuple[float, float] = (0.0, 1.0),
        ctx: Optional[mx.Context] = None,
        arch: Optional[str] = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        low, high = (float(b) for b in bounds)
        if not low < high:
            raise ConfigError(f"bounds must satisfy low < high, got {tuple(bounds)}")
        self.num_classes = int(num_classes)
        self.input_size = parse_input_size(input_size) if input_size is not None else None
        self.bounds = (low, high)
        self.ctx = ctx if ctx is not None else mx.cpu()
        self.folded = False
        self.frozen = False
        self.mode_free = False
        self.class_table: Optional[ClassTable] = None
        self.arch = arch or type(net).__name__
        channels = self.input_size[0] if self.input_size else max(np.size(mean), np.size(std))
        with self.name_scope():
            self.net = net
            self.mean = self.params.get_constant("mean", _as_channel_array(mean, channels, "mean"))
            self.std = self.params.get_constant("std", _as_channel_array(std, channels, "std"))
        self.mean.initialize(ctx=self.ctx)
        self.std.initialize(ctx=self.ctx)

    def hybrid_forward(self, F: Any, x: Any, mean: Any, std: Any) -> Any:  # noqa: N803 (Gluon's signature)
        return self.net(F.broadcast_div(F.broadcast_sub(x, mean), std))

    @property
    def class_names(self) -> Optional[list]:
        """The name of each output (``model.class_names[3]``), or None when unknown."""
        return list(self.class_table.names) if self.class_table is not None else None

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits for a NumPy batch, computed in eval mode in chunks of ``batch_size``."""
        return predict_in_chunks(self, x, self.ctx, self.num_classes, batch_size)

    def describe(self) -> str:
        """One line saying what this classifier is."""
        size = "x".join(map(str, self.input_size)) if self.input_size else "any size"
        return (
            f"{self.arch} | {self.num_classes} classes | input {size} | bounds {self.bounds} | "
            f"BatchNorm {'folded' if self.folded else 'as is'} | {self.ctx}"
        )


class FirstOutput(gluon.HybridBlock):
    """The first output of a network that returns several: its classifier's logits.

    Some classifiers also return auxiliary outputs (GluonCV's NASNet returns
    ``(logits, auxiliary_logits)`` from its auxiliary training head). GluonCV puts the
    main classifier first, so the first output is what is classified and attacked;
    the others are dropped, and folding prunes the layers only they used.

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
        The network; it returns a list or tuple whose first item is ``(N, classes)``.
    """

    def __init__(self, net: gluon.HybridBlock) -> None:
        super().__init__()
        with self.name_scope():
            self.net = net

    def hybrid_forward(self, F: Any, x: Any) -> Any:  # noqa: N803 (Gluon's signature)
        return self.net(x)[0]


def predict_in_chunks(
    block: Callable[[mx.nd.NDArray], mx.nd.NDArray], x: np.ndarray, ctx: mx.Context, num_classes: int,
    batch_size: int = 256,
) -> np.ndarray:
    """``block``'s outputs for a NumPy batch as one array, in eval mode, not recorded, ``batch_size`` at a time."""
    out = []
    with mx.autograd.pause(train_mode=False):
        for start in range(0, len(x), batch_size):
            chunk = mx.nd.array(x[start : start + batch_size], ctx=ctx, dtype="float32")
            out.append(block(chunk).asnumpy())
    return np.concatenate(out) if out else np.zeros((0, num_classes), np.float32)

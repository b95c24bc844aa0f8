"""Input squeezers shared by the defences and the detectors: bit-depth reduction and the median filter.

Xu, Evans & Qi (2018), "Feature Squeezing: Detecting Adversarial Examples in
Deep Neural Networks", NDSS, https://arxiv.org/abs/1704.01155: colour
bit-depth reduction and local median smoothing remove input detail that a
natural image does not need. :class:`~gluon_robust.defenses.BitDepthReduction`
and :class:`~gluon_robust.defenses.MedianFilter` apply them as input
defences, :class:`~gluon_robust.detection.FeatureSqueezingDetector` compares
the predictions on an input and its squeezed copies.

Both squeezers are NDArray operations on the input's ctx. The median filter
is differentiable under autograd almost everywhere (``sort``'s backward routes
each output's gradient to the pixel that is the median of its window).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from mxnet import nd

__all__ = ["bit_depth", "median_filter", "padded_indices"]

_NUMPY_MODES = {"reflect": "symmetric", "edge": "edge"}


def bit_depth(x: nd.NDArray, bits: int, bounds: Tuple[float, float] = (0.0, 1.0), *,
              step_product: bool = False) -> nd.NDArray:
    """Reduce each pixel to ``2**bits`` evenly spaced levels of ``bounds`` (rounding to the nearest).

    Idempotent: an input whose pixels are already on the levels is returned unchanged.

    Parameters
    ----------
    x : NDArray
        Inputs in ``bounds`` (values outside are clipped to them first).
    bits : int
        Bits per pixel; ``2**bits - 1`` steps between the bounds.
    bounds : tuple of float
        The model's input range ``(low, high)``.
    step_product : bool
        How level ``k`` is mapped back to the range: ``low + k * ((high - low) / steps)``
        when True (the defence's arithmetic), ``k / steps * (high - low) + low`` when
        False (the detector's). The two may differ in the last bit of a float32.
    """
    low, high = bounds
    steps = float(2**bits - 1)
    unit = nd.clip((x - low) / (high - low), 0.0, 1.0)
    levels = nd.round(unit * steps)
    if step_product:
        return low + levels * ((high - low) / steps)
    return levels / steps * (high - low) + low


def padded_indices(length: int, size: int, mode: str) -> np.ndarray:
    """Source index of every position of an axis of ``length`` padded for a window of ``size``.

    The window at ``i`` covers ``i - size//2 .. i - size//2 + size - 1``. ``mode``
    is ``"reflect"`` (SciPy's ``d c b a | a b c d``) or ``"edge"`` (replication,
    SciPy's ``"nearest"``).
    """
    before, after = size // 2, size - 1 - size // 2
    return np.pad(np.arange(length), (before, after), mode=_NUMPY_MODES[mode])


def median_filter(x: nd.NDArray, size: int, mode: str = "edge") -> nd.NDArray:
    """Per-channel ``size x size`` median filter of an ``(N, C, H, W)`` batch, keeping its size.

    The window at pixel ``(i, j)`` covers rows ``i - size//2 .. i - size//2 + size - 1``
    (likewise columns), and the median is the element of rank ``size*size // 2``
    in ascending order (the upper median for even sizes), as in
    :func:`scipy.ndimage.median_filter` with ``mode="nearest"`` (``mode="edge"``)
    or ``mode="reflect"``. Under autograd, the gradient of every output is that of
    the selected median pixel of its window.

    Parameters
    ----------
    x : NDArray
        Batch ``(N, C, H, W)``.
    size : int
        Window size; 1 returns ``x`` itself.
    mode : {"edge", "reflect"}
        How the border is padded.
    """
    if size == 1:
        return x
    height, width = x.shape[2], x.shape[3]
    rows = nd.array(padded_indices(height, size, mode), ctx=x.context, dtype="int32")
    cols = nd.array(padded_indices(width, size, mode), ctx=x.context, dtype="int32")
    padded = nd.take(nd.take(x, rows, axis=2), cols, axis=3)
    windows = nd.stack(*[padded[:, :, i : i + height, j : j + width] for i in range(size) for j in range(size)],
                       axis=-1)
    return nd.sort(windows, axis=-1)[:, :, :, :, size * size // 2]

"""Local smoothing filters as defences: the median filter and linear spatial smoothing.

Median filter: Xu, Evans & Qi (2018), "Feature Squeezing: Detecting
Adversarial Examples in Deep Neural Networks", NDSS,
https://arxiv.org/abs/1704.01155 (local median smoothing). Computed with
SciPy, so it is outside autograd: the declared gradient path is BPDA (Athalye,
Carlini & Wagner 2018, https://arxiv.org/abs/1802.00420). A median is
piecewise linear in its window, so its derivative exists almost everywhere: it
routes each output's gradient to the pixel that is the median.
:func:`differentiable_median` computes the same filter in MXNet with ``sort``,
whose backward does exactly that, and is the default BPDA substitute
(``bpda="select"``); ``bpda="identity"`` gives the classic identity.

Spatial smoothing: a mean (box) or Gaussian filter, the linear counterpart
(Li & Li 2017, "Adversarial Examples Detection in Deep Networks with
Convolutional Filter Statistics", https://arxiv.org/abs/1612.07767, use an
average filter). A depthwise convolution on the model's ctx, differentiated
exactly.

Both filters reflect the image at its border and keep its size.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from mxnet import nd

from ..errors import ConfigError
from ..squeezing import median_filter
from ..validation import check_int, check_real
from .base import Preprocessor

__all__ = ["MedianFilter", "SpatialSmoothing", "differentiable_median"]


def _odd_size(size: int) -> int:
    size = check_int("size", size, minimum=3, maximum=15)
    if size % 2 == 0:
        raise ConfigError(f"size must be odd, got {size}")
    return size


def differentiable_median(x: nd.NDArray, size: int) -> nd.NDArray:
    """The ``size x size`` median filter of an NCHW batch in MXNet, with SciPy's reflected border.

    Its value equals :func:`scipy.ndimage.median_filter` (``mode="reflect"``);
    under autograd its gradient is that of the selected median pixel of every
    window (``sort``'s backward), the filter's derivative almost everywhere.
    """
    return median_filter(x, size, mode="reflect")


class MedianFilter(Preprocessor):
    """Replace every pixel by the median of its ``size x size`` window, per channel.

    Parameters
    ----------
    size : int
        Odd window size, 3 to 15.
    bpda : {"select", "identity"}
        The BPDA substitute: :func:`differentiable_median` (default; the
        filter's own derivative almost everywhere) or the identity.
    """

    name = "median"
    gradient = "bpda"
    differentiable = False

    def __init__(self, *, size: int = 3, bpda: str = "select") -> None:
        self.size = _odd_size(size)
        if bpda not in ("select", "identity"):
            raise ConfigError(f"median bpda must be 'select' or 'identity', got {bpda!r}")
        self.bpda = bpda

    def substitute(self, x: nd.NDArray, bounds: Tuple[float, float]) -> Optional[nd.NDArray]:
        """:func:`differentiable_median` for ``bpda="select"``, None (the identity) otherwise."""
        return None if self.bpda == "identity" else differentiable_median(x, self.size)

    def transform(self, x: nd.NDArray, bounds: Tuple[float, float]) -> nd.NDArray:
        from scipy import ndimage

        out = ndimage.median_filter(x.asnumpy(), size=(1, 1, self.size, self.size), mode="reflect")
        return nd.array(out, ctx=x.context, dtype="float32")


class SpatialSmoothing(Preprocessor):
    """A mean or Gaussian filter (depthwise convolution), differentiated exactly.

    Parameters
    ----------
    size : int
        Odd window size, 3 to 15.
    sigma : float, optional
        Standard deviation of a Gaussian kernel, in pixels; None (default) for
        the mean filter.
    """

    name = "spatial"
    gradient = "exact"
    differentiable = True

    def __init__(self, *, size: int = 3, sigma: Optional[float] = None) -> None:
        self.size = _odd_size(size)
        self.sigma = None if sigma is None else check_real("sigma", sigma, 0.0, low_open=True)

    def kernel(self) -> np.ndarray:
        """The normalised ``size x size`` kernel."""
        if self.sigma is None:
            k1 = np.ones(self.size)
        else:
            r = np.arange(self.size) - self.size // 2
            k1 = np.exp(-0.5 * (r / self.sigma) ** 2)
        k2 = np.outer(k1, k1)
        return (k2 / k2.sum()).astype(np.float32)

    def transform(self, x: nd.NDArray, bounds: Tuple[float, float]) -> nd.NDArray:
        channels = x.shape[1]
        half = self.size // 2
        if min(x.shape[2], x.shape[3]) <= half:
            raise ConfigError(f"spatial size {self.size} is too large for images of {x.shape[2]}x{x.shape[3]}")
        weight = nd.array(np.tile(self.kernel()[None, None], (channels, 1, 1, 1)), ctx=x.context)
        padded = nd.pad(x, mode="reflect", pad_width=(0, 0, 0, 0, half, half, half, half))
        return nd.Convolution(padded, weight, kernel=(self.size, self.size), num_filter=channels,
                              num_group=channels, no_bias=True)

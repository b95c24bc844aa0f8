"""Local smoothing filters as defences: the median filter and linear spatial smoothing.

Median filter: Xu, Evans & Qi (2018), "Feature Squeezing: Detecting
Adversarial Examples in Deep Neural Networks", NDSS,
https://arxiv.org/abs/1704.01155 (local median smoothing). Computed with
SciPy, so not differentiable: the declared gradient path is BPDA with the
identity (Athalye, Carlini & Wagner 2018, https://arxiv.org/abs/1802.00420).

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
from .base import Preprocessor, check_bounded_int, check_real

__all__ = ["MedianFilter", "SpatialSmoothing"]


def _odd_size(size: int) -> int:
    size = check_bounded_int("size", size, 3, 15)
    if size % 2 == 0:
        raise ConfigError(f"size must be odd, got {size}")
    return size


class MedianFilter(Preprocessor):
    """Replace every pixel by the median of its ``size x size`` window, per channel.

    Parameters
    ----------
    size : int
        Odd window size, 3 to 15.
    """

    name = "median"
    gradient = "bpda"
    differentiable = False

    def __init__(self, *, size: int = 3) -> None:
        self.size = _odd_size(size)

    def transform(self, x: nd.NDArray, bounds: Tuple[float, float]) -> nd.NDArray:
        from scipy.ndimage import median_filter

        out = median_filter(x.asnumpy(), size=(1, 1, self.size, self.size), mode="reflect")
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

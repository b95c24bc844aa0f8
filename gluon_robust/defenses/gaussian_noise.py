"""Additive Gaussian noise as a randomised defence.

Zantedeschi, Nicolae & Rawat (2017), "Efficient Defenses Against Adversarial
Attacks", https://arxiv.org/abs/1707.06728 (Gaussian data augmentation and
noise at test time); for randomised defences, attacks average gradients over
the noise: Expectation over Transformation (Athalye, Engstrom, Ilyas & Kwok
2018, https://arxiv.org/abs/1707.07397).

Draws from MXNet's generator on the model's ctx (seed it with
``mx.random.seed``). Each draw is differentiable; the declared path is EOT.
"""

from __future__ import annotations

from typing import Tuple

from mxnet import nd

from ..validation import check_real
from .base import Preprocessor

__all__ = ["GaussianNoise"]


class GaussianNoise(Preprocessor):
    """Add ``N(0, sigma^2)`` noise to every pixel and clip to the bounds.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixel units (the scale of the bounds), > 0.
    """

    name = "noise"
    gradient = "eot"
    differentiable = True

    def __init__(self, *, sigma: float = 0.1) -> None:
        self.sigma = check_real("sigma", sigma, 0.0, low_open=True)

    def transform(self, x: nd.NDArray, bounds: Tuple[float, float]) -> nd.NDArray:
        noise = nd.random.normal(0.0, self.sigma, shape=x.shape, ctx=x.context, dtype="float32")
        return nd.clip(x + noise, *bounds)

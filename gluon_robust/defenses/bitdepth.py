"""Bit-depth reduction (colour-depth squeezing) as a defence.

Xu, Evans & Qi (2018), "Feature Squeezing: Detecting Adversarial Examples in
Deep Neural Networks", NDSS, https://arxiv.org/abs/1704.01155. Broken by BPDA
with the identity (Athalye, Carlini & Wagner 2018, https://arxiv.org/abs/1802.00420).

Every pixel is rounded to one of ``2**bits`` evenly spaced levels of the
model's range. Computed with NDArray operations on the model's ctx, but its
derivative is zero almost everywhere, so the declared gradient path is BPDA.
"""

from __future__ import annotations

from typing import Tuple

from mxnet import nd

from ..squeezing import bit_depth
from ..validation import check_int
from .base import Preprocessor

__all__ = ["BitDepthReduction"]


class BitDepthReduction(Preprocessor):
    """Quantise pixels to ``2**bits`` levels between the bounds.

    Parameters
    ----------
    bits : int
        Bits per pixel, 1 to 16 (1 = binarise at the middle of the range).
    """

    name = "bitdepth"
    gradient = "bpda"
    differentiable = False

    def __init__(self, *, bits: int = 4) -> None:
        self.bits = check_int("bits", bits, minimum=1, maximum=16)

    def transform(self, x: nd.NDArray, bounds: Tuple[float, float]) -> nd.NDArray:
        return bit_depth(x, self.bits, bounds, step_product=True)

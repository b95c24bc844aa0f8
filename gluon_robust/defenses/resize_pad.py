"""Random resizing and padding (Xie et al. 2018) as a randomised defence.

Xie, Wang, Zhang, Ren & Yuille (2018), "Mitigating Adversarial Effects Through
Randomization", ICLR, https://arxiv.org/abs/1711.01991. Broken with EOT
(Athalye, Carlini & Wagner 2018, https://arxiv.org/abs/1802.00420).

Xie et al. resize a 299-pixel image to a random size in [299, 331) and pad it
at a random offset to 331 pixels. A classifier with a fixed input size then
needs the canvas resized back to the input size; this module does the three
steps as one bilinear resampling with a per-sample affine grid
(``GridGenerator`` + ``BilinearSampler``): the image, scaled by a random
``r / max_ratio`` with ``r`` uniform in ``[1, max_ratio]``, is placed at a random
offset on a canvas filled with the lower bound. Each draw is differentiable on
the model's ctx; the declared path is EOT. Random draws come from MXNet's
generator (seed it with ``mx.random.seed``).
"""

from __future__ import annotations

from typing import Tuple

from mxnet import nd

from ..validation import check_real
from .base import Preprocessor

__all__ = ["RandomResizePad"]


class RandomResizePad(Preprocessor):
    """Randomly shrink each image inside a padded canvas of ``max_ratio`` times its size.

    Parameters
    ----------
    max_ratio : float
        Canvas size over image size, in [1, 4]; Xie et al. use 331/299 (about
        1.107). ``1`` is the identity.
    """

    name = "resize-pad"
    gradient = "eot"
    differentiable = True

    def __init__(self, *, max_ratio: float = 1.15) -> None:
        self.max_ratio = check_real("max_ratio", max_ratio, 1.0, 4.0)

    def transform(self, x: nd.NDArray, bounds: Tuple[float, float]) -> nd.NDArray:
        low, _ = bounds
        n, _, h, w = x.shape
        canvas = self.max_ratio
        ctx = x.context
        ratio = nd.random.uniform(1.0, canvas, shape=(n,), ctx=ctx)  # image size on the canvas, in input sizes
        # Offsets of the image's top-left corner on the canvas, in [0, canvas - ratio].
        off_x = nd.random.uniform(0.0, 1.0, shape=(n,), ctx=ctx) * (canvas - ratio)
        off_y = nd.random.uniform(0.0, 1.0, shape=(n,), ctx=ctx) * (canvas - ratio)
        # Output coordinate u in [-1, 1] lies at canvas position (u + 1) / 2 * canvas, which is the
        # normalised input coordinate (canvas / ratio) u + (canvas - 2 offset) / ratio - 1.
        scale = canvas / ratio
        zero = nd.zeros((n,), ctx=ctx)
        theta = nd.stack(scale, zero, (canvas - 2 * off_x) / ratio - 1, zero, scale,
                         (canvas - 2 * off_y) / ratio - 1, axis=1)
        grid = nd.GridGenerator(theta, transform_type="affine", target_shape=(h, w))
        return nd.BilinearSampler(x - low, grid) + low  # outside the image: the lower bound

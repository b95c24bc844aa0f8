"""Total-variation minimisation (Guo et al. 2018) as a randomised defence.

Guo, Rana, Cisse & van der Maaten (2018), "Countering Adversarial Images using
Input Transformations", ICLR, https://arxiv.org/abs/1711.00117, section 3.3:
drop pixels at random, then reconstruct the image of least total variation
that agrees with the kept pixels. Broken with BPDA and EOT (Athalye, Carlini &
Wagner 2018, https://arxiv.org/abs/1802.00420).

The reconstruction here is a simple solver: the dropped pixels start from a
normalised-convolution fill (local mean of the kept pixels), then ``steps``
gradient steps decrease

    1/2 sum(mask * (z - x)^2) + weight * sum(sqrt(|grad z|^2 + smoothing^2))

with a step size below the inverse Lipschitz constant, and the result is
clipped to the bounds. It runs in NDArray operations on the model's ctx, with
recording paused: the solver is treated as a black box, so the declared path
is EOT over the random mask with BPDA (identity) through each draw.
"""

from __future__ import annotations

from typing import Tuple

from mxnet import autograd, nd

from ..validation import check_int, check_real
from .base import Preprocessor

__all__ = ["TVMinimization", "total_variation"]


def total_variation(x: nd.NDArray) -> nd.NDArray:
    """Anisotropic total variation per sample: sum of absolute horizontal and vertical differences."""
    dh = nd.abs(x[:, :, :, 1:] - x[:, :, :, :-1]).sum(axis=(1, 2, 3))
    dv = nd.abs(x[:, :, 1:, :] - x[:, :, :-1, :]).sum(axis=(1, 2, 3))
    return dh + dv


def _box3(x: nd.NDArray) -> nd.NDArray:
    """3x3 sums per channel, zero outside the image."""
    channels = x.shape[1]
    weight = nd.ones((channels, 1, 3, 3), ctx=x.context)
    return nd.Convolution(x, weight, kernel=(3, 3), pad=(1, 1), num_filter=channels, num_group=channels, no_bias=True)


class TVMinimization(Preprocessor):
    """Random pixel dropout, then a total-variation-minimising reconstruction.

    Parameters
    ----------
    keep : float
        Probability that a pixel is kept, in (0, 1]; Guo et al. keep about half.
    weight : float
        Weight of the total variation against the data term, >= 0.
    steps : int
        Gradient steps of the solver, 1 to 1000.
    smoothing : float
        The smoothing of the total variation (pixel units, scale of the
        bounds), > 0; smaller is closer to the true total variation but slower
        to converge.
    """

    name = "tv"
    gradient = "eot"
    differentiable = False

    def __init__(self, *, keep: float = 0.5, weight: float = 0.03, steps: int = 30, smoothing: float = 0.05) -> None:
        self.keep = check_real("keep", keep, 0.0, 1.0, low_open=True)
        self.weight = check_real("weight", weight, 0.0)
        self.steps = check_int("steps", steps, minimum=1, maximum=1000)
        self.smoothing = check_real("smoothing", smoothing, 0.0, low_open=True)

    def transform(self, x: nd.NDArray, bounds: Tuple[float, float]) -> nd.NDArray:
        low, high = bounds
        scale = high - low
        with autograd.pause():
            u = (x - low) / scale
            mask = (nd.random.uniform(0.0, 1.0, shape=x.shape, ctx=x.context) < self.keep).astype("float32")
            counts = _box3(mask)
            fill = _box3(u * mask) / nd.maximum(counts, 1e-6)
            z = mask * u + (1 - mask) * nd.where(counts > 0, fill, nd.full(u.shape, 0.5, ctx=x.context))
            eps = self.smoothing / scale
            step = 1.0 / (1.0 + 8.0 * self.weight / eps)
            for _ in range(self.steps):
                z = z - step * (mask * (z - u) + self.weight * self._tv_gradient(z, eps))
            return low + scale * nd.clip(z, 0.0, 1.0)

    @staticmethod
    def _tv_gradient(z: nd.NDArray, eps: float) -> nd.NDArray:
        """Gradient of sum(sqrt(dx^2 + dy^2 + eps^2)) with forward differences (zero at the far border)."""
        dx = nd.concat(z[:, :, :, 1:] - z[:, :, :, :-1], nd.zeros_like(z[:, :, :, :1]), dim=3)
        dy = nd.concat(z[:, :, 1:, :] - z[:, :, :-1, :], nd.zeros_like(z[:, :, :1, :]), dim=2)
        norm = nd.sqrt(dx * dx + dy * dy + eps * eps)
        px, py = dx / norm, dy / norm
        # The gradient is -div(p): backward differences of p, with p = 0 before the first pixel.
        div_x = px - nd.concat(nd.zeros_like(px[:, :, :, :1]), px[:, :, :, :-1], dim=3)
        div_y = py - nd.concat(nd.zeros_like(py[:, :, :1, :]), py[:, :, :-1, :], dim=2)
        return -(div_x + div_y)


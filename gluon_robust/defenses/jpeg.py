"""JPEG compression as a defence.

Dziugaite, Ghahramani & Roy (2016), "A study of the effect of JPG compression
on adversarial images", https://arxiv.org/abs/1608.00853; Guo, Rana, Cisse &
van der Maaten (2018), "Countering Adversarial Images using Input
Transformations", ICLR, https://arxiv.org/abs/1711.00117. Broken by BPDA with
the identity (Athalye, Carlini & Wagner 2018, https://arxiv.org/abs/1802.00420).

Each image is quantised to 8 bits, encoded with OpenCV's JPEG encoder at the
given quality and decoded again. Deterministic; not differentiable (OpenCV
code), so the declared gradient path is BPDA. By default BPDA differentiates a
differentiable JPEG (``bpda="smooth"``): the same 8x8 block DCT and the same
quality-scaled quantisation tables, with rounding replaced by the cubic soft
rounding of Shin & Song (2017), "JPEG-resistant Adversarial Images", NIPS
Workshop on Machine Learning and Computer Security,
https://machine-learning-and-security.github.io/papers/mlsec17_paper_54.pdf.
Its gradient follows what the quantiser keeps and drops, so an attack aims
its perturbation at the coefficients that survive compression; with
``bpda="identity"`` the backward pass is the identity.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Tuple

import numpy as np
from mxnet import nd

from ..errors import ConfigError, DataError
from ..validation import check_int
from .base import Preprocessor

__all__ = ["JPEGCompression", "quantization_tables", "differentiable_jpeg"]


def to_uint8(x: np.ndarray, bounds: Tuple[float, float]) -> np.ndarray:
    """A pixel-space float batch as 8-bit values (0 at ``low``, 255 at ``high``)."""
    low, high = bounds
    return np.clip(np.rint((x - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def from_uint8(u: np.ndarray, bounds: Tuple[float, float]) -> np.ndarray:
    """8-bit values back to the pixel range ``bounds`` as float32."""
    low, high = bounds
    return (low + u.astype(np.float32) * ((high - low) / 255.0)).astype(np.float32)


#: The example quantisation tables of the JPEG standard (ITU-T T.81, Annex K), row-major.
_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64).reshape(8, 8)
_CHROMA = np.full((8, 8), 99.0)
_CHROMA[:4, :4] = np.array([17, 18, 24, 47, 18, 21, 26, 66, 24, 26, 56, 99, 47, 66, 99, 99], dtype=np.float64).reshape(4, 4)
#: RGB (0-255) to YCbCr as JFIF defines it; the offsets (0, 128, 128) are added separately.
_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


@lru_cache(maxsize=None)
def quantization_tables(quality: int) -> Tuple[np.ndarray, np.ndarray]:
    """The luma and chroma quantisation tables libjpeg uses at ``quality`` (1-100), as float arrays (8, 8)."""
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    return tuple(np.clip(np.floor((t * scale + 50.0) / 100.0), 1, 255) for t in (_LUMA, _CHROMA))


@lru_cache(maxsize=None)
def _dct_matrix() -> np.ndarray:
    """The orthonormal 8-point DCT-II matrix ``D``; a block's coefficients are ``D @ B @ D.T``."""
    k, n = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    d = np.sqrt(2.0 / 8.0) * np.cos((2 * n + 1) * k * np.pi / 16.0)
    d[0] /= np.sqrt(2.0)
    return d


def _soft_round(v: nd.NDArray) -> nd.NDArray:
    """``round(v) + (v - round(v))**3``: rounding's value, a nonzero derivative (Shin & Song 2017)."""
    r = nd.BlockGrad(nd.round(v))
    return r + (v - r) ** 3


def differentiable_jpeg(x: nd.NDArray, bounds: Tuple[float, float], quality: int) -> nd.NDArray:
    """A differentiable approximation of JPEG compression and decompression at ``quality``.

    The image is padded to whole 8x8 blocks by edge replication (as encoders
    do), converted to YCbCr for 3 channels, block-DCT transformed, divided by
    the quality's quantisation tables, soft-rounded, multiplied back and
    inverted. Chroma is not subsampled (OpenCV subsamples it 2x2), so for
    colour images the value is further from the real codec than for
    grayscale; it is used for its derivative only.
    """
    low, high = bounds
    n, channels, height, width = x.shape
    ctx = x.context
    u = (x - low) * (255.0 / (high - low))
    pad_h, pad_w = -height % 8, -width % 8
    if pad_h or pad_w:
        u = nd.pad(u, mode="edge", pad_width=(0, 0, 0, 0, 0, pad_h, 0, pad_w))
    hp, wp = height + pad_h, width + pad_w
    luma, chroma = quantization_tables(quality)
    if channels == 3:
        m = nd.array(_YCBCR, ctx=ctx)
        u = nd.dot(m, u.transpose((1, 0, 2, 3)).reshape((3, -1))).reshape((3, n, hp, wp)).transpose((1, 0, 2, 3))
        u = u + nd.array([0.0, 128.0, 128.0], ctx=ctx).reshape((1, 3, 1, 1))
        tables = np.stack([luma, chroma, chroma])
    else:
        tables = np.stack([luma] * channels)
    # (N, C, H, W) -> (N, C, H/8, W/8, 8, 8) blocks, level-shifted by 128
    blocks = (u - 128.0).reshape((n, channels, hp // 8, 8, wp // 8, 8)).transpose((0, 1, 2, 4, 3, 5))
    d = nd.array(_dct_matrix(), ctx=ctx)
    q = nd.array(tables, ctx=ctx).reshape((1, channels, 1, 1, 8, 8))

    def sandwich(a: nd.NDArray, left: nd.NDArray) -> nd.NDArray:  # left @ a @ left.T over the last two axes
        rows = nd.dot(a, left.T)                                   # a @ left.T
        return nd.dot(rows.swapaxes(-1, -2), left.T).swapaxes(-1, -2)  # left @ (a @ left.T)

    coefficients = sandwich(blocks, d)
    restored = sandwich(_soft_round(coefficients / q) * q, d.T) + 128.0
    u = restored.transpose((0, 1, 2, 4, 3, 5)).reshape((n, channels, hp, wp))
    if channels == 3:
        inverse = nd.array(np.linalg.inv(_YCBCR), ctx=ctx)
        u = u - nd.array([0.0, 128.0, 128.0], ctx=ctx).reshape((1, 3, 1, 1))
        u = nd.dot(inverse, u.transpose((1, 0, 2, 3)).reshape((3, -1))).reshape((3, n, hp, wp)).transpose((1, 0, 2, 3))
    u = u[:, :, :height, :width]
    return low + nd.clip(u, 0.0, 255.0) * ((high - low) / 255.0)


class JPEGCompression(Preprocessor):
    """JPEG encode and decode every image (OpenCV), 1- or 3-channel (RGB) inputs.

    Parameters
    ----------
    quality : int
        JPEG quality, 1 (strongest compression) to 100.
    bpda : {"smooth", "identity"}
        The BPDA substitute: :func:`differentiable_jpeg` (default) or the identity.

    Examples
    --------
    >>> defended = DefendedClassifier(model, [JPEGCompression(quality=75)])
    """

    name = "jpeg"
    gradient = "bpda"
    differentiable = False

    def __init__(self, *, quality: int = 75, bpda: str = "smooth") -> None:
        self.quality = check_int("quality", quality, minimum=1, maximum=100)
        if bpda not in ("smooth", "identity"):
            raise ConfigError(f"jpeg bpda must be 'smooth' or 'identity', got {bpda!r}")
        self.bpda = bpda

    def substitute(self, x: nd.NDArray, bounds: Tuple[float, float]) -> Optional[nd.NDArray]:
        """:func:`differentiable_jpeg` for ``bpda="smooth"``, None (the identity) otherwise."""
        if self.bpda == "identity" or x.shape[1] not in (1, 3):
            return None
        return differentiable_jpeg(x, bounds, self.quality)

    def transform(self, x: nd.NDArray, bounds: Tuple[float, float]) -> nd.NDArray:
        import cv2

        channels = x.shape[1]
        if channels not in (1, 3):
            raise DataError(f"jpeg needs 1- or 3-channel images, got {channels} channels")
        pixels = to_uint8(x.asnumpy(), bounds).transpose(0, 2, 3, 1)  # NHWC
        out = np.empty_like(pixels)
        params = [int(cv2.IMWRITE_JPEG_QUALITY), self.quality]
        for i, img in enumerate(pixels):
            img = img[:, :, 0] if channels == 1 else np.ascontiguousarray(img[:, :, ::-1])  # OpenCV is BGR
            ok, buf = cv2.imencode(".jpg", img, params)
            if not ok:
                raise RuntimeError("OpenCV failed to encode an image as JPEG")
            decoded = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR)
            out[i] = decoded[:, :, None] if channels == 1 else decoded[:, :, ::-1]
        return nd.array(from_uint8(out.transpose(0, 3, 1, 2), bounds), ctx=x.context, dtype="float32")

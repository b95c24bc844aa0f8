"""JPEG compression as a defence.

Dziugaite, Ghahramani & Roy (2016), "A study of the effect of JPG compression
on adversarial images", https://arxiv.org/abs/1608.00853; Guo, Rana, Cisse &
van der Maaten (2018), "Countering Adversarial Images using Input
Transformations", ICLR, https://arxiv.org/abs/1711.00117. Broken by BPDA with
the identity (Athalye, Carlini & Wagner 2018, https://arxiv.org/abs/1802.00420).

Each image is quantised to 8 bits, encoded with OpenCV's JPEG encoder at the
given quality and decoded again. Deterministic; not differentiable (OpenCV
code), so the declared gradient path is BPDA.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from mxnet import nd

from ..errors import DataError
from .base import Preprocessor, check_bounded_int

__all__ = ["JPEGCompression"]


def to_uint8(x: np.ndarray, bounds: Tuple[float, float]) -> np.ndarray:
    """A pixel-space float batch as 8-bit values (0 at ``low``, 255 at ``high``)."""
    low, high = bounds
    return np.clip(np.rint((x - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def from_uint8(u: np.ndarray, bounds: Tuple[float, float]) -> np.ndarray:
    """8-bit values back to the pixel range ``bounds`` as float32."""
    low, high = bounds
    return (low + u.astype(np.float32) * ((high - low) / 255.0)).astype(np.float32)


class JPEGCompression(Preprocessor):
    """JPEG encode and decode every image (OpenCV), 1- or 3-channel (RGB) inputs.

    Parameters
    ----------
    quality : int
        JPEG quality, 1 (strongest compression) to 100.

    Examples
    --------
    >>> defended = DefendedClassifier(model, [JPEGCompression(quality=75)])
    """

    name = "jpeg"
    gradient = "bpda"
    differentiable = False

    def __init__(self, *, quality: int = 75) -> None:
        self.quality = check_bounded_int("quality", quality, 1, 100)

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

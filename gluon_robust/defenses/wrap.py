"""Any per-image function as a defence: an OpenCV function, a GluonCV transform, your own code.

The function gets one image at a time in HWC layout, as NumPy (OpenCV style)
or as an NDArray (GluonCV and ``mx.image`` style), in float pixel units or as
8-bit values, and returns an image of the same size. Because the library
cannot look inside it, the caller declares its gradient path: ``bpda`` (the
default: identity backward, Athalye, Carlini & Wagner 2018,
https://arxiv.org/abs/1802.00420), ``eot`` for a randomised function (EOT
over draws, BPDA through each unless it is differentiable), or ``exact`` for
a function made of differentiable NDArray operations (``array="ndarray"``,
``pixels="float"``).

From a spec string the function is an import path, ``module:attr`` or
``module.attr``, of a one-argument callable:
``wrap:fn=mypackage.defences:denoise,gradient=bpda``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Tuple, Union

import numpy as np
from mxnet import nd

from ..errors import ConfigError
from .base import Preprocessor
from .jpeg import from_uint8, to_uint8

__all__ = ["WrapDefense", "resolve_callable"]


def resolve_callable(path: str) -> Callable[[Any], Any]:
    """Import ``module:attr`` or ``module.attr`` (dotted attributes allowed after the colon)."""
    text = str(path).strip()
    if ":" in text:
        module_name, _, attr = text.partition(":")
    else:
        module_name, _, attr = text.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"fn must be an import path module:attr or module.attr, got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import fn {path!r}: {err}") from None
    if not callable(obj):
        raise ConfigError(f"fn {path!r} is not callable")
    return obj


class WrapDefense(Preprocessor):
    """Apply a user function to every image (HWC), with a declared gradient path.

    Parameters
    ----------
    fn : callable or str
        ``fn(image) -> image`` on one HWC image, or an import path to one.
    gradient : str
        ``"bpda"`` (default), ``"eot"`` (randomised) or ``"exact"``.
    array : str
        ``"numpy"`` (default) or ``"ndarray"``: the type ``fn`` receives.
    pixels : str
        ``"float"`` (default): float32 in the model's bounds; ``"uint8"``:
        8-bit values, 0 at the lower bound and 255 at the upper (OpenCV's
        usual input); the result is mapped back.
    differentiable : bool
        For ``gradient="eot"``: differentiate each draw exactly (needs
        ``array="ndarray"`` and ``pixels="float"``) instead of by BPDA.

    Examples
    --------
    >>> import cv2
    >>> blur = WrapDefense(fn=lambda img: cv2.GaussianBlur(img, (3, 3), 0), pixels="uint8")
    >>> from gluoncv.data.transforms.image import random_pca_lighting
    >>> lighting = WrapDefense(fn=lambda img: random_pca_lighting(img, 0.1), array="ndarray", gradient="eot")
    """

    name = "wrap"
    gradient = "bpda"
    differentiable = False

    def __init__(
        self,
        *,
        fn: Union[Callable[[Any], Any], str],
        gradient: str = "bpda",
        array: str = "numpy",
        pixels: str = "float",
        differentiable: bool = False,
    ) -> None:
        self.fn = resolve_callable(fn) if isinstance(fn, str) else fn
        if not callable(self.fn):
            raise ConfigError(f"fn must be callable or an import path, got {fn!r}")
        if gradient not in ("exact", "bpda", "eot"):
            raise ConfigError(f"gradient must be exact, bpda or eot, got {gradient!r}")
        if array not in ("numpy", "ndarray"):
            raise ConfigError(f"array must be numpy or ndarray, got {array!r}")
        if pixels not in ("float", "uint8"):
            raise ConfigError(f"pixels must be float or uint8, got {pixels!r}")
        if not isinstance(differentiable, bool):
            raise ConfigError(f"differentiable must be true or false, got {differentiable!r}")
        in_graph = array == "ndarray" and pixels == "float"
        if (gradient == "exact" or differentiable) and not in_graph:
            raise ConfigError("an exact or differentiable wrap needs array=ndarray and pixels=float "
                              f"(got array={array}, pixels={pixels})")
        self.gradient = gradient  # type: ignore[misc]  (declared per instance)
        self.differentiable = gradient == "exact" or differentiable  # type: ignore[misc]
        self.array = array
        self.pixels = pixels

    def transform(self, x: nd.NDArray, bounds: Tuple[float, float]) -> nd.NDArray:
        n, channels, h, w = x.shape
        if self.array == "ndarray" and self.pixels == "float":  # stays in the autograd graph
            images = [self._check(self.fn(x[i].transpose((1, 2, 0))), (h, w, channels)) for i in range(n)]
            return nd.stack(*images).transpose((0, 3, 1, 2)).astype("float32")
        batch = x.asnumpy().transpose(0, 2, 3, 1)
        if self.pixels == "uint8":
            batch = to_uint8(batch, bounds)
        out = np.empty(batch.shape, np.float32)
        for i, img in enumerate(batch):
            arg = nd.array(img, dtype=img.dtype) if self.array == "ndarray" else np.ascontiguousarray(img)
            result = self._check(self.fn(arg), (h, w, channels))
            out[i] = result.asnumpy() if isinstance(result, nd.NDArray) else result
        out = out.transpose(0, 3, 1, 2)
        if self.pixels == "uint8":
            out = from_uint8(np.clip(np.rint(out), 0, 255).astype(np.uint8), bounds)
        return nd.array(out, ctx=x.context, dtype="float32")

    def _check(self, result: Any, shape: Tuple[int, int, int]) -> Any:
        """``result`` as an HWC image of ``shape`` (a 2-D result is given one channel)."""
        if not isinstance(result, (np.ndarray, nd.NDArray)):
            raise ConfigError(f"wrap: fn must return an image array, got {type(result).__name__}")
        if result.ndim == 2 and shape[2] == 1:
            result = result.reshape(result.shape + (1,))
        if tuple(result.shape) != shape:
            raise ConfigError(f"wrap: fn returned shape {tuple(result.shape)} for an image of shape {shape}")
        return result

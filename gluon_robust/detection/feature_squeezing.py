"""Feature squeezing: compare the prediction on an input with those on squeezed copies.

Xu, Evans & Qi (2018), "Feature Squeezing: Detecting Adversarial Examples in
Deep Neural Networks", NDSS, https://arxiv.org/abs/1704.01155.

A squeezer removes input detail that a natural image does not need (colour
bit depth, isolated pixel noise). The score is the largest L1 distance
between the softmax of the input and the softmax of a squeezed copy of it,
over the squeezers: ``max_s || p(x) - p(s(x)) ||_1``, in ``[0, 2]``. The
squeezers suggested for MNIST are 1-bit depth and a 2x2 median filter.

Squeezing is not differentiable (rounding, sorting). :meth:`score_nd` passes
gradients through it by BPDA (Athalye, Carlini & Wagner 2018, "Obfuscated
Gradients Give a False Sense of Security", https://arxiv.org/abs/1802.00420):
the forward pass is the squeezer, the backward pass the identity.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from mxnet import autograd, nd

from ..errors import ConfigError
from ..squeezing import bit_depth, median_filter
from .base import Detector

__all__ = ["FeatureSqueezingDetector", "bit_depth", "median_filter", "parse_squeezer"]


Squeezer = Callable[[nd.NDArray, Tuple[float, float]], nd.NDArray]


def parse_squeezer(spec: str) -> Tuple[str, Squeezer]:
    """A squeezer from ``"bits:B"`` (bit depth, 1 <= B <= 8) or ``"median:K"`` (K x K median, 1 <= K <= 7)."""
    kind, _, arg = str(spec).strip().lower().partition(":")
    try:
        value = int(arg)
    except ValueError:
        value = None
    if kind in ("bits", "bit-depth", "bit_depth") and value is not None and 1 <= value <= 8:
        return f"bits:{value}", lambda x, bounds, b=value: bit_depth(x, b, bounds)
    if kind in ("median", "median-filter") and value is not None and 1 <= value <= 7:
        return f"median:{value}", lambda x, bounds, k=value: median_filter(x, k)
    raise ConfigError(f"squeezers: invalid squeezer {spec!r}; use bits:B (1..8) or median:K (1..7)")


class FeatureSqueezingDetector(Detector):
    """Xu et al. (2018) joint detector: the max L1 distance between predictions on the input and its squeezed copies.

    Parameters
    ----------
    squeezers : str or sequence of str
        Squeezers, as ``"bits:B"`` or ``"median:K"``; a string may list several
        separated by ``+`` (``"bits:1+median:2"``, the MNIST setting of the
        paper and the default).

    Examples
    --------
    >>> det = FeatureSqueezingDetector(squeezers="bits:1+median:2")
    >>> det.calibrate(det.score(model, x_clean_heldout), fpr=0.05)
    >>> det.flag(model, x_adv)
    """

    name = "feature-squeezing"
    gradient = "bpda"

    def __init__(self, *, squeezers: Union[str, Sequence[str]] = "bits:1+median:2") -> None:
        super().__init__()
        specs: List[str] = squeezers.split("+") if isinstance(squeezers, str) else list(squeezers)
        if not specs or not all(isinstance(s, str) and s.strip() for s in specs):
            raise ConfigError(f"squeezers must name at least one squeezer, got {squeezers!r}")
        parsed = [parse_squeezer(s) for s in specs]
        self.squeezers = [name for name, _ in parsed]
        self._functions = [fn for _, fn in parsed]

    def config(self) -> dict:
        return {"squeezers": "+".join(self.squeezers)}

    def squeeze(self, x: nd.NDArray, bounds: Tuple[float, float] = (0.0, 1.0)) -> List[nd.NDArray]:
        """The squeezed copies of ``x``, with BPDA (identity) gradients.

        The squeezers run outside autograd (MXNet 1.9.1 crashes recording ``sort``
        over a stacked axis); ``x + (s(x) - x)`` with the bracket constant has the
        squeezed value and the identity gradient.
        """
        with autograd.pause():
            squeezed = [fn(x.detach(), bounds) for fn in self._functions]
            base = x.detach()
        return [x + (s - base) for s in squeezed]

    def score_nd(self, model: Any, x: nd.NDArray, logits: Optional[nd.NDArray] = None) -> nd.NDArray:
        bounds = getattr(model, "bounds", (0.0, 1.0))
        n = x.shape[0]
        squeezed = self.squeeze(x, bounds)
        if logits is None:
            all_logits = model(nd.concat(x, *squeezed, dim=0))
            logits, rest = all_logits[:n], all_logits[n:]
        else:
            rest = model(nd.concat(*squeezed, dim=0))
        p = nd.softmax(logits, axis=1)
        distances = [
            nd.sum(nd.abs(p - nd.softmax(rest[i * n : (i + 1) * n], axis=1)), axis=1) for i in range(len(squeezed))
        ]
        return nd.max(nd.stack(*distances, axis=0), axis=0)

"""Threat-model norms as small hook objects shared by every attack.

An attack never branches on the norm. It asks the norm for a random start, a
steepest-ascent direction for a gradient, a projection onto the epsilon-ball,
a per-sample distance, the dual norm and the projection inside the bounds.
Every method works on both backends: an NDArray in gives an NDArray out (on
the input's ctx, for the white-box attacks) and a NumPy array in gives a NumPy
array out (for the black-box attacks, which work in NumPy). The NumPy
distances are float64. Where an attack's own hyperparameters differ per norm
(a paper's defaults), it asks :meth:`Norm.choose` rather than testing the name.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple, Type, TypeVar, Union

import numpy as np
from mxnet import nd

from ..errors import ConfigError

__all__ = ["Norm", "LinfNorm", "L2Norm", "L1Norm", "L0Norm", "get_norm", "NORMS"]

_TINY = 1e-12
Array = Union[nd.NDArray, np.ndarray]
T = TypeVar("T")
_MISSING: Any = object()


def _flat(x: Array) -> Array:
    if isinstance(x, np.ndarray):
        return x.reshape(len(x), int(np.prod(x.shape[1:])))
    return x.reshape((x.shape[0], -1))


def _per_sample(values: Array, like: Array) -> Array:
    """Reshape an (N,) array to broadcast against ``like`` (N, ...)."""
    if isinstance(like, np.ndarray):
        return np.asarray(values).reshape((-1,) + (1,) * (like.ndim - 1))
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


def _is_np(a: Any) -> bool:
    return isinstance(a, np.ndarray)


class Norm(abc.ABC):
    """An Lp threat model: distance, projection, steepest direction and random start."""

    name: ClassVar[str]

    @abc.abstractmethod
    def distance(self, delta: Array) -> Array:
        """Per-sample norm of ``delta`` (N, ...) -> (N,)."""

    @abc.abstractmethod
    def project(self, delta: Array, eps: float) -> Array:
        """Project each sample of ``delta`` onto the ball of radius ``eps``."""

    @abc.abstractmethod
    def direction(self, grad: Array) -> Array:
        """Steepest-ascent direction of unit norm for a gradient (the dual-norm maximiser)."""

    @abc.abstractmethod
    def random_start(self, rngs: Sequence[np.random.Generator], shape: Tuple[int, ...], eps: float) -> np.ndarray:
        """A uniform random point of the ball for each sample, drawn from that sample's generator.

        One generator per sample keeps a sample's draw independent of the
        batch it is in (see :func:`gluon_robust.attacks.base.sample_generators`).
        """

    def dual(self) -> "Norm":
        """The dual norm (``1/p + 1/q = 1``): L1 for L-inf, L2 for L2, L-inf for L1."""
        raise ConfigError(f"{self.name} has no dual norm")

    def dual_norm(self, grad: Array) -> Array:
        """Per-sample dual norm of ``grad``: ``max <grad, v>`` over the unit ball, ``<grad, direction(grad)>``.

        The distance of a point to a hyperplane with normal ``grad`` is
        ``|value| / dual_norm(grad)`` (used by DeepFool and FAB).
        """
        prod = _flat(grad * self.direction(grad))
        return prod.sum(axis=1) if _is_np(prod) else nd.sum(prod, axis=1)

    def distance_like(self, delta: np.ndarray) -> np.ndarray:
        """Per-sample norm of a NumPy ``delta`` in its own dtype (``distance`` is float64)."""
        raise ConfigError(f"{self.name} has no distance_like")

    def clip_to_box(self, x: Array, delta: Array, eps: float, low: float, high: float) -> Array:
        """``x + delta`` projected onto the eps-ball around ``x``, then clipped to the bounds ``[low, high]``.

        With ``x`` inside the bounds, clipping moves coordinates towards ``x``
        and so never leaves the ball again.
        """
        point = x + self.project(delta, eps)
        return np.clip(point, low, high) if _is_np(point) else nd.clip(point, low, high)

    def unbounded_radius(self, width: float, size: int) -> float:
        """A radius whose ball covers the whole box of side ``width`` in ``size`` dimensions (its diagonal)."""
        return width * np.sqrt(size)

    #: Whether the norm bounds every coordinate on its own (L-inf), so that a budget is comparable with the
    #: width of the input range whatever the input's size.
    coordinatewise: ClassVar[bool] = False

    def diameter(self, width: float, size: int) -> Optional[float]:
        """The largest distance between two points of a box of side ``width`` in ``size`` dimensions
        (None where the norm has no finite use of it, as for L0)."""
        return None

    def coordinate_bounds(self, x: Array, eps: float, low: float, high: float) -> Tuple[Any, Any]:
        """Per-coordinate limits for moving one coordinate of ``x`` alone: the bounds, cut to the ball where it is a box."""
        return low, high

    def hyperplane_direction(self, w: Array) -> Array:
        """The (unnormalised) direction of the minimal-norm step onto ``<w, delta> = c`` (KKT), for FAB."""
        raise ConfigError(f"box_projection supports norms linf and l2, got norm={self.name!r}")

    def choose(self, **options: T) -> T:
        """The option named after this norm, else ``otherwise``: per-norm hyperparameters of an attack.

        Examples
        --------
        >>> get_norm("l2").choose(linf=8, otherwise=32)
        32
        """
        if self.name in options:
            return options[self.name]
        if "otherwise" in options:
            return options["otherwise"]
        raise ConfigError(f"no setting for norm {self.name!r}; settings exist for {', '.join(options)}")

    def __repr__(self) -> str:
        return self.name

    # ---------------------------------------------- added for attacks/engine.py
    def sphere_start(self, rngs: Sequence[np.random.Generator], shape: Tuple[int, ...], eps: float) -> np.ndarray:
        """APGD's random start: a point of the sphere of radius ``eps`` per sample, float32 (N, *shape).

        Croce & Hein (2020), https://arxiv.org/abs/2003.01690, as their
        reference implementation draws it; norms without one raise.
        """
        raise ConfigError(f"norm {self.name} has no APGD random start; use linf or l2")

    def with_sparsity(self, sparsity: float) -> "Norm":
        """This norm with the given step sparsity; only L1 steps are sparse, so others return ``self``."""
        return self


class LinfNorm(Norm):
    """L-infinity: the box ``|delta_i| <= eps``; the steepest direction is the sign."""

    name = "linf"
    coordinatewise = True

    def diameter(self, width: float, size: int) -> Optional[float]:
        return width

    def distance(self, delta: Array) -> Array:
        if _is_np(delta):  # |.| and max are exact, so the float64 cast can come after them (one pass less)
            flat = _flat(delta)
            return np.abs(flat).max(axis=1).astype(np.float64) if flat.shape[1] else np.zeros(len(flat))
        return nd.max(nd.abs(_flat(delta)), axis=1)

    def distance_like(self, delta: np.ndarray) -> np.ndarray:
        return np.abs(_flat(delta)).max(axis=1)

    def project(self, delta: Array, eps: float) -> Array:
        return np.clip(delta, -eps, eps) if _is_np(delta) else nd.clip(delta, -eps, eps)

    def direction(self, grad: Array) -> Array:
        return np.sign(grad) if _is_np(grad) else nd.sign(grad)

    def dual(self) -> Norm:
        return L1Norm()

    def unbounded_radius(self, width: float, size: int) -> float:
        return width * 1.0

    def coordinate_bounds(self, x: Array, eps: float, low: float, high: float) -> Tuple[Any, Any]:
        if _is_np(x):
            return np.maximum(low, x - eps), np.minimum(high, x + eps)
        return nd.maximum(x - eps, low), nd.minimum(x + eps, high)

    def hyperplane_direction(self, w: Array) -> Array:
        return self.direction(w)

    def random_start(self, rngs: Sequence[np.random.Generator], shape: Tuple[int, ...], eps: float) -> np.ndarray:
        return np.stack([rng.uniform(-eps, eps, size=shape) for rng in rngs]).astype(np.float32)

    # ---------------------------------------------- added for attacks/engine.py
    def sphere_start(self, rngs: Sequence[np.random.Generator], shape: Tuple[int, ...], eps: float) -> np.ndarray:
        """``eps * t / ||t||_inf`` with ``t ~ U[-1, 1]^d``: the largest coordinate is ``eps``."""
        out = []
        for rng in rngs:
            t = rng.uniform(-1.0, 1.0, size=shape)
            out.append(eps * t / (np.abs(t).max() + _TINY))
        return np.stack(out).astype(np.float32)


class L2Norm(Norm):
    """L2: the Euclidean ball; the steepest direction is the normalised gradient."""

    name = "l2"

    def diameter(self, width: float, size: int) -> Optional[float]:
        return math.sqrt(size) * width

    def distance(self, delta: Array) -> Array:
        if _is_np(delta):
            return np.sqrt((_flat(delta).astype(np.float64) ** 2).sum(axis=1))
        return nd.norm(_flat(delta), ord=2, axis=1)

    def distance_like(self, delta: np.ndarray) -> np.ndarray:
        return np.linalg.norm(_flat(delta), axis=1)

    def project(self, delta: Array, eps: float) -> Array:
        norms = self.distance(delta)
        if _is_np(delta):
            factor = np.minimum(1.0, eps / (norms + _TINY))
            return (delta * _per_sample(factor, delta)).astype(delta.dtype)
        factor = nd.minimum(nd.ones_like(norms), eps / (norms + _TINY))
        return delta * _per_sample(factor, delta)

    def direction(self, grad: Array) -> Array:
        return grad / _per_sample(self.distance(grad) + _TINY, grad)

    def dual(self) -> Norm:
        return L2Norm()

    def hyperplane_direction(self, w: Array) -> Array:
        return w

    def random_start(self, rngs: Sequence[np.random.Generator], shape: Tuple[int, ...], eps: float) -> np.ndarray:
        # Uniform in the ball: a uniform direction (normalised Gaussian) times eps * U^(1/d).
        d = int(np.prod(shape))
        out = []
        for rng in rngs:
            v = rng.standard_normal(shape)
            out.append(v / (np.linalg.norm(v) + _TINY) * eps * rng.random() ** (1.0 / d))
        return np.stack(out).astype(np.float32)

    # ---------------------------------------------- added for attacks/engine.py
    def sphere_start(self, rngs: Sequence[np.random.Generator], shape: Tuple[int, ...], eps: float) -> np.ndarray:
        """``eps * t / ||t||_2`` with ``t ~ N(0, I)``: a point of the sphere."""
        out = []
        for rng in rngs:
            t = rng.standard_normal(shape)
            out.append(eps * t / (np.sqrt((t**2).sum()) + _TINY))
        return np.stack(out).astype(np.float32)


class L1Norm(Norm):
    """L1: the cross-polytope; steps move only the largest-gradient coordinates.

    The steepest L1 direction is a single coordinate. Following Tramer & Boneh
    (2019, "Adversarial Training and Robustness for Multiple Perturbations"),
    the step spreads over the top ``sparsity`` fraction of coordinates by
    gradient magnitude, which is far more effective than one coordinate.
    Projection is the exact Euclidean projection onto the L1 ball (Duchi et
    al. 2008, "Efficient Projections onto the l1-Ball").
    """

    name = "l1"

    def diameter(self, width: float, size: int) -> Optional[float]:
        return size * width

    def __init__(self, sparsity: float = 0.01) -> None:
        if not 0.0 < sparsity <= 1.0:
            raise ConfigError(f"sparsity must be in (0, 1], got {sparsity!r}")
        self.sparsity = sparsity

    def distance(self, delta: Array) -> Array:
        if _is_np(delta):
            return np.abs(_flat(delta).astype(np.float64)).sum(axis=1)
        return nd.sum(nd.abs(_flat(delta)), axis=1)

    def distance_like(self, delta: np.ndarray) -> np.ndarray:
        return np.abs(_flat(delta)).sum(axis=1)

    def dual(self) -> Norm:
        return LinfNorm()

    def project(self, delta: Array, eps: float) -> Array:
        if _is_np(delta):
            return _np_l1_project(delta, eps)
        flat = _flat(delta)
        mag = nd.abs(flat)
        inside = self.distance(delta) <= eps
        # Soft threshold at theta, where theta solves sum(max(|v| - theta, 0)) = eps.
        srt = nd.sort(mag, axis=1, is_ascend=False)
        cumsum = nd.cumsum(srt, axis=1)
        ks = nd.arange(1, flat.shape[1] + 1, ctx=delta.context).reshape((1, -1))
        cond = (srt - (cumsum - eps) / ks) > 0
        rho = nd.sum(cond, axis=1)  # number of coordinates that stay non-zero
        idx = nd.maximum(rho - 1, nd.zeros_like(rho))
        theta = (nd.pick(cumsum, idx, axis=1) - eps) / nd.maximum(rho, nd.ones_like(rho))
        shrunk = nd.sign(flat) * nd.relu(mag - theta.reshape((-1, 1)))
        out = nd.where(inside.reshape((-1, 1)).broadcast_like(flat), flat, shrunk)
        return out.reshape(delta.shape)

    def direction(self, grad: Array) -> Array:
        flat = _flat(grad)
        k = max(1, int(round(self.sparsity * flat.shape[1])))
        if _is_np(grad):
            mag = np.abs(flat)
            kth = -np.sort(-mag, axis=1)[:, k - 1 : k]
            mask = (mag >= kth).astype(grad.dtype)
            return (np.sign(flat) * mask / (mask.sum(axis=1, keepdims=True) + _TINY)).reshape(grad.shape)
        mag = nd.abs(flat)
        kth = nd.topk(mag, axis=1, k=k, ret_typ="value").min(axis=1, keepdims=True)
        mask = nd.broadcast_greater_equal(mag, kth)
        step = nd.sign(flat) * mask
        return (step / (nd.sum(mask, axis=1, keepdims=True) + _TINY)).reshape(grad.shape)

    def random_start(self, rngs: Sequence[np.random.Generator], shape: Tuple[int, ...], eps: float) -> np.ndarray:
        # Uniform in the cross-polytope: a normalised Laplace draw times eps * U^(1/d).
        d = int(np.prod(shape))
        out = []
        for rng in rngs:
            v = rng.laplace(size=shape)
            out.append(v / (np.abs(v).sum() + _TINY) * eps * rng.random() ** (1.0 / d))
        return np.stack(out).astype(np.float32)

    # ---------------------------------------------- added for attacks/engine.py
    def with_sparsity(self, sparsity: float) -> "L1Norm":
        """A new L1 norm whose steps move the top ``sparsity`` fraction of coordinates."""
        return L1Norm(sparsity=sparsity)


class L0Norm(Norm):
    """L0: the number of changed input features (for sparse attacks such as JSMA).

    Only ``distance`` is meaningful; L0 attacks do not use the gradient hooks.
    """

    name = "l0"

    def distance(self, delta: Array) -> Array:
        if _is_np(delta):
            return (np.abs(_flat(delta)) > 1e-7).sum(axis=1).astype(np.float64)
        return nd.sum(nd.abs(_flat(delta)) > 1e-7, axis=1)

    def project(self, delta: nd.NDArray, eps: float) -> nd.NDArray:
        raise ConfigError("L0 has no projection; L0 attacks bound the changed features themselves")

    def direction(self, grad: nd.NDArray) -> nd.NDArray:
        raise ConfigError("L0 has no steepest direction; use an L0 attack such as jsma")

    def random_start(self, rngs: Sequence[np.random.Generator], shape: Tuple[int, ...], eps: float) -> np.ndarray:
        raise ConfigError("L0 has no random start")


def _np_l1_project(delta: np.ndarray, eps: float) -> np.ndarray:
    """NumPy twin of :meth:`L1Norm.project` (Duchi et al. 2008, sort-based soft threshold)."""
    flat = _flat(delta)
    mag = np.abs(flat)
    inside = mag.sum(axis=1) <= eps
    srt = -np.sort(-mag, axis=1)
    cumsum = np.cumsum(srt, axis=1)
    ks = np.arange(1, flat.shape[1] + 1).reshape(1, -1)
    rho = ((srt - (cumsum - eps) / ks) > 0).sum(axis=1)
    idx = np.maximum(rho - 1, 0)
    theta = (cumsum[np.arange(len(flat)), idx] - eps) / np.maximum(rho, 1)
    shrunk = np.sign(flat) * np.maximum(mag - theta.reshape(-1, 1), 0)
    return np.where(inside.reshape(-1, 1), flat, shrunk).astype(delta.dtype).reshape(delta.shape)


NORMS: Dict[str, Type[Norm]] = {"linf": LinfNorm, "l2": L2Norm, "l1": L1Norm, "l0": L0Norm}
_ALIASES = {"inf": "linf", "l_inf": "linf", "linfinity": "linf", "2": "l2", "1": "l1", "0": "l0"}


def get_norm(norm: str | Norm) -> Norm:
    """Return a norm object from a name such as ``"linf"``, ``"l2"`` or ``"l1"``."""
    if isinstance(norm, Norm):
        return norm
    key = str(norm).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    return NORMS[key]()

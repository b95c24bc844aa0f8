"""Threat-model norms as small hook objects shared by every gradient attack.

An attack never branches on the norm. It asks the norm for a random start, a
steepest-ascent direction for a gradient, a projection onto the epsilon-ball
and a per-sample distance. Everything stays an NDArray on the input's ctx.
"""

from __future__ import annotations

import abc
from typing import ClassVar, Dict, Sequence, Tuple, Type

import numpy as np
from mxnet import nd

from ..errors import ConfigError

__all__ = ["Norm", "LinfNorm", "L2Norm", "L1Norm", "L0Norm", "get_norm", "NORMS"]

_TINY = 1e-12


def _flat(x: nd.NDArray) -> nd.NDArray:
    return x.reshape((x.shape[0], -1))


def _per_sample(values: nd.NDArray, like: nd.NDArray) -> nd.NDArray:
    """Reshape an (N,) array to broadcast against ``like`` (N, ...)."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


class Norm(abc.ABC):
    """An Lp threat model: distance, projection, steepest direction and random start."""

    name: ClassVar[str]

    @abc.abstractmethod
    def distance(self, delta: nd.NDArray) -> nd.NDArray:
        """Per-sample norm of ``delta`` (N, ...) -> (N,)."""

    @abc.abstractmethod
    def project(self, delta: nd.NDArray, eps: float) -> nd.NDArray:
        """Project each sample of ``delta`` onto the ball of radius ``eps``."""

    @abc.abstractmethod
    def direction(self, grad: nd.NDArray) -> nd.NDArray:
        """Steepest-ascent direction of unit norm for a gradient (the dual-norm maximiser)."""

    @abc.abstractmethod
    def random_start(self, rngs: Sequence[np.random.Generator], shape: Tuple[int, ...], eps: float) -> np.ndarray:
        """A uniform random point of the ball for each sample, drawn from that sample's generator.

        One generator per sample keeps a sample's draw independent of the
        batch it is in (see :func:`gluon_robust.attacks.base.sample_generators`).
        """

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

    def distance(self, delta: nd.NDArray) -> nd.NDArray:
        return nd.max(nd.abs(_flat(delta)), axis=1)

    def project(self, delta: nd.NDArray, eps: float) -> nd.NDArray:
        return nd.clip(delta, -eps, eps)

    def direction(self, grad: nd.NDArray) -> nd.NDArray:
        return nd.sign(grad)

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

    def distance(self, delta: nd.NDArray) -> nd.NDArray:
        return nd.norm(_flat(delta), ord=2, axis=1)

    def project(self, delta: nd.NDArray, eps: float) -> nd.NDArray:
        norms = self.distance(delta)
        factor = nd.minimum(nd.ones_like(norms), eps / (norms + _TINY))
        return delta * _per_sample(factor, delta)

    def direction(self, grad: nd.NDArray) -> nd.NDArray:
        return grad / _per_sample(self.distance(grad) + _TINY, grad)

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

    def __init__(self, sparsity: float = 0.01) -> None:
        if not 0.0 < sparsity <= 1.0:
            raise ConfigError(f"sparsity must be in (0, 1], got {sparsity!r}")
        self.sparsity = sparsity

    def distance(self, delta: nd.NDArray) -> nd.NDArray:
        return nd.sum(nd.abs(_flat(delta)), axis=1)

    def project(self, delta: nd.NDArray, eps: float) -> nd.NDArray:
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

    def direction(self, grad: nd.NDArray) -> nd.NDArray:
        flat = _flat(grad)
        k = max(1, int(round(self.sparsity * flat.shape[1])))
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

    def distance(self, delta: nd.NDArray) -> nd.NDArray:
        return nd.sum(nd.abs(_flat(delta)) > 1e-7, axis=1)

    def project(self, delta: nd.NDArray, eps: float) -> nd.NDArray:
        raise ConfigError("L0 has no projection; L0 attacks bound the changed features themselves")

    def direction(self, grad: nd.NDArray) -> nd.NDArray:
        raise ConfigError("L0 has no steepest direction; use an L0 attack such as jsma")

    def random_start(self, rngs: Sequence[np.random.Generator], shape: Tuple[int, ...], eps: float) -> np.ndarray:
        raise ConfigError("L0 has no random start")


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

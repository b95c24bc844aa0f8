"""SimBA: simple black-box attack along random orthonormal directions, in the pixel or the DCT basis.

Guo, Gardner, You, Wilson & Weinberger (2019), "Simple Black-box Adversarial
Attacks", ICML, https://arxiv.org/abs/1905.07121.

Distance: L2 (the paper's measure) or L-inf; minimal perturbation by default,
or inside a fixed epsilon. Targeted and untargeted. Needs class scores.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import numpy as np

from ..validation import check_int, check_positive
from .base import AttackKind
from .blackbox import BlackBoxAttack, QueryCounter, is_adversarial, margin, take

__all__ = ["SimBA", "SimBADCT", "dct_matrix", "frequency_order"]


@functools.lru_cache(maxsize=8)
def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix (n, n): row ``k`` is the ``k``-th cosine basis vector (read-only)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    basis = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    basis.setflags(write=False)
    return basis


def frequency_order(shape: Tuple[int, int, int], first: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of (channel, u, v) DCT coefficients, low frequencies first.

    The ``first x first`` lowest frequencies of every channel come first in a
    random order, then successive bands ``stride`` frequencies wider, each in
    a random order (the paper's low-frequency ordering), until every
    coefficient is listed once.
    """
    c, h, w = shape
    u = np.arange(h)[:, None]
    v = np.arange(w)[None, :]
    band = np.maximum(0, (np.maximum(u, v) - first) // stride + 1)  # 0 for the first block, then 1, 2, ...
    band = np.broadcast_to(band, (c, h, w)).reshape(-1)
    order = []
    for b in range(int(band.max()) + 1):
        members = np.flatnonzero(band == b)
        order.append(members[rng.permutation(len(members))])
    return np.concatenate(order)


class SimBA(BlackBoxAttack):
    """SimBA in the pixel basis (Guo et al. 2019).

    Directions ``q`` are drawn without replacement from an orthonormal basis.
    For each, the attack tries ``x - step_size * q`` and, if the margin does not
    decrease, ``x + step_size * q``, keeping whichever decreases it (the paper
    uses the probability of the true class; the margin works on logits and
    probabilities alike). A candidate the bounds or the ball make equal
    to the current point is not queried. A sample stops when it is
    adversarial, when its budget is spent or when every direction was tried.

    Each pixel is changed at most once, by ``+-step_size``: with
    ``norm="linf"`` and ``step_size = eps`` (the default then) SimBA is an
    L-inf attack whose every point lies in the eps-box.

    Parameters
    ----------
    eps : float, optional
        Radius of the threat model; candidates are projected into the ball.
        None (default): minimal perturbation, the distance is what it takes.
    norm : str
        ``"l2"`` (default) or ``"linf"``.
    step_size : float, optional
        Step along each direction, in pixel units; default ``eps`` for L-inf
        with an ``eps``, else 0.2 (the paper's value).
    max_queries : int
        Per-sample budget (default 10,000): one query for the clean input,
        then one or two per direction.
    seed : int
        Seed of the direction order.

    Notes
    -----
    Shapes: ``x`` (N, C, H, W), ``y`` and ``target`` (N,). See
    :class:`SimBADCT` for the low-frequency DCT basis.

    Examples
    --------
    >>> attack = SimBA(norm="linf", eps=0.3, max_queries=5000)
    >>> result = attack(model, x, y)
    >>> SimBA(step_size=0.2)(model, x, y).distance         # L2 size of each perturbation
    """

    name = "simba"
    norms = ("l2", "linf")
    kind = AttackKind.BLACK_BOX_MINIMUM_NORM
    basis = "pixel"

    def __init__(self, *, eps: Optional[float] = None, norm: str = "l2", step_size: Optional[float] = None,
                 max_queries: int = 10000, seed: int = 0) -> None:
        super().__init__(norm=norm, eps=None if eps is None else check_positive("eps", eps), max_queries=max_queries, seed=seed)
        if step_size is None:
            linf_step = self.norm.choose(linf=self.eps, otherwise=None)  # the paper: eps for L-inf
            step_size = linf_step if linf_step is not None else 0.2
        self.step_size = check_positive("step_size", step_size)

    # ---------------------------------------------------------------- basis
    def _orders(self, shape: Tuple[int, int, int], rngs: Sequence[np.random.Generator]) -> np.ndarray:
        """The direction order of each sample, (N, C*H*W)."""
        return np.stack([rng.permutation(int(np.prod(shape))) for rng in rngs])

    def _directions(self, shape: Tuple[int, int, int], index: np.ndarray) -> np.ndarray:
        """Unit basis vectors for flat indices (M,), shaped (M, C, H, W)."""
        out = np.zeros((len(index), int(np.prod(shape))), np.float32)
        out[np.arange(len(index)), index] = 1.0
        return out.reshape((len(index),) + shape)

    # ------------------------------------------------------------------ run
    def _attack(self, oracle: QueryCounter, x: np.ndarray, y: np.ndarray, target: Optional[np.ndarray],
                rngs: Sequence[np.random.Generator]) -> np.ndarray:
        shape = x.shape[1:]
        rows = np.arange(len(x))
        current = x.copy()
        scores = oracle.scores(current, rows)
        loss = margin(scores, y, target)
        done = is_adversarial(scores.argmax(axis=1), y, target)
        orders = self._orders(shape, rngs)
        for k in range(orders.shape[1]):
            active = np.flatnonzero(~done & (oracle.remaining > 0))
            if active.size == 0:
                break
            step = self._directions(shape, orders[active, k])
            step *= np.float32(self.step_size)
            clean = x if active.size == len(x) else x[active]
            base = current[active]  # rows improved by the first sign are left out of the second's trial
            improved = np.zeros(len(active), bool)
            for sign in (-1.0, 1.0):
                # Try the direction for samples not yet improved, with budget, whose candidate is a new point.
                candidates = self._candidates(clean, base - step if sign < 0 else base + step, oracle.bounds)
                moved = np.any((candidates != base).reshape(len(active), -1), axis=1)
                trial = np.flatnonzero(~improved & moved & (oracle.remaining[active] > 0))
                if trial.size == 0:
                    continue
                idx = active[trial]
                scores = oracle.scores(candidates[trial], idx)
                new_loss = margin(scores, y[idx], take(target, idx))
                hit = is_adversarial(scores.argmax(axis=1), y[idx], take(target, idx))
                keep = (new_loss < loss[idx]) | hit
                current[idx[keep]] = candidates[trial[keep]]
                loss[idx[keep]] = new_loss[keep]
                done[idx[keep]] = hit[keep]
                improved[trial[keep]] = True
        return current

    def _candidates(self, x: np.ndarray, points: np.ndarray, bounds: Tuple[float, float]) -> np.ndarray:
        """Points moved into the ball (when there is an eps) and the bounds."""
        if self.eps is not None:
            points = x + self.norm.project(points - x, self.eps)
        return np.clip(points, *bounds).astype(np.float32)


class SimBADCT(SimBA):
    """SimBA-DCT: SimBA along low-frequency DCT directions first (Guo et al. 2019).

    The basis is the orthonormal 2-D DCT of each channel; directions come in
    the paper's low-frequency order (:func:`frequency_order`): the
    ``freq_dims x freq_dims`` lowest frequencies of every channel in random
    order, then bands ``stride`` wider. Same procedure and parameters as
    :class:`SimBA`, plus:

    Parameters
    ----------
    freq_dims : int, optional
        Side of the first low-frequency block; default an eighth of the
        image side (at least 1), as in the paper.
    stride : int, optional
        Width of each following band; default ``freq_dims``.

    Examples
    --------
    >>> result = SimBADCT(max_queries=5000)(model, x, y)   # L2, minimal perturbation
    >>> SimBADCT(norm="linf", eps=0.3, step_size=0.2)(model, x, y).success.mean()
    """

    name = "simba-dct"
    basis = "dct"

    def __init__(self, *, eps: Optional[float] = None, norm: str = "l2", step_size: Optional[float] = None,
                 max_queries: int = 10000, freq_dims: Optional[int] = None, stride: Optional[int] = None,
                 seed: int = 0) -> None:
        super().__init__(eps=eps, norm=norm, step_size=step_size, max_queries=max_queries, seed=seed)
        self.freq_dims = None if freq_dims is None else check_int("freq_dims", freq_dims)
        self.stride = None if stride is None else check_int("stride", stride)

    def _orders(self, shape: Tuple[int, int, int], rngs: Sequence[np.random.Generator]) -> np.ndarray:
        first = self.freq_dims or max(1, round(min(shape[1:]) / 8))
        stride = self.stride or first
        return np.stack([frequency_order(shape, first, stride, rng) for rng in rngs])

    def _directions(self, shape: Tuple[int, int, int], index: np.ndarray) -> np.ndarray:
        c, h, w = shape
        channel, rest = np.divmod(index, h * w)
        u, v = np.divmod(rest, w)
        rows_h, rows_w = dct_matrix(h), dct_matrix(w)
        out = np.zeros((len(index), c, h, w), np.float32)
        out[np.arange(len(index)), channel] = np.einsum("mi,mj->mij", rows_h[u], rows_w[v])
        return out

"""NumPy helpers shared by the score-based and decision-based black-box attacks.

The margin to minimise, the success test, per-sample broadcasting, the
blend between a clean and an adversarial point, the noise start of the
decision-based attacks and their binary search for the decision boundary.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .queries import QueryCounter

__all__ = ["margin", "is_adversarial", "per_sample", "take", "blend", "noise_start", "boundary_search"]


def per_sample(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Reshape (N,) values to broadcast against ``like`` (N, ...)."""
    return np.asarray(values).reshape((-1,) + (1,) * (like.ndim - 1))


def margin(scores: np.ndarray, y: np.ndarray, target: Optional[np.ndarray]) -> np.ndarray:
    """The margin to *minimise*, negative exactly when the attack succeeds (ties aside).

    Untargeted: ``s_y - max_{j != y} s_j``; targeted: ``max_{j != t} s_j - s_t``.
    Works the same on logits and on probabilities.
    """
    scores = scores.astype(np.float64)
    label = y if target is None else target
    picked = scores[np.arange(len(scores)), label]
    others = scores.copy()
    others[np.arange(len(scores)), label] = -np.inf
    best_other = others.max(axis=1)
    return picked - best_other if target is None else best_other - picked


def is_adversarial(labels: np.ndarray, y: np.ndarray, target: Optional[np.ndarray]) -> np.ndarray:
    """Misclassified (untargeted) or classified as the target (targeted)."""
    return labels != y if target is None else labels == target



def take(a: Optional[np.ndarray], idx: Any) -> Optional[np.ndarray]:
    """``a[idx]``, or None for no array (the targets of an untargeted attack)."""
    return None if a is None else a[idx]


def blend(x: np.ndarray, x_adv: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``(1 - alpha) x + alpha x_adv`` per sample (alpha (N,) in [0, 1])."""
    a = per_sample(alpha, x).astype(np.float32)
    return ((1 - a) * x + a * x_adv).astype(np.float32)


def _noise_sides(h: int, w: int) -> List[Tuple[int, int]]:
    """Grid sizes of the start noise: full resolution, then 1x1, 2x2, 4x4, ... up to the image."""
    sides = [(h, w)]
    k = 1
    while k < max(h, w):
        sides.append((min(k, h), min(k, w)))
        k *= 2
    return sides


def noise_start(oracle: QueryCounter, x: np.ndarray, y: np.ndarray, target: Optional[np.ndarray], rows: np.ndarray,
                rngs: Sequence[np.random.Generator], tries: int) -> Tuple[np.ndarray, np.ndarray]:
    """Uniform noise in the bounds, drawn until adversarial (one query a draw, at most ``tries``).

    Draw ``k`` is uniform noise on a grid cycling through full resolution,
    1x1, 2x2, 4x4, ... cells, each cell one uniform value: a network may call
    every full-resolution noise image the same class (the MNIST reference
    model calls it an 8), and coarser noise reaches other classes.

    Returns ``(points, found)``: the first adversarial draw of each sample
    (its clean input where none was found) and whether one was found.
    ``rngs[i]`` draws for ``rows[i]``.
    """
    low, high = oracle.bounds
    c, h, w = x.shape[1:]
    sides = _noise_sides(h, w)
    points, found = x.copy(), np.zeros(len(x), bool)
    for k in range(tries):
        active = np.flatnonzero(~found & (oracle.remaining[rows] > 0))
        if active.size == 0:
            break
        gh, gw = sides[k % len(sides)]
        cells = np.stack([rngs[i].uniform(low, high, size=(c, gh, gw)) for i in active])
        noise = cells.repeat(-(-h // gh), axis=2).repeat(-(-w // gw), axis=3)[:, :, :h, :w].astype(np.float32)
        hit = is_adversarial(oracle.labels(noise, rows[active]), y[active], take(target, active))
        points[active[hit]] = noise[hit]
        found[active[hit]] = True
    return points, found


def boundary_search(
    oracle: QueryCounter,
    x: np.ndarray,
    x_adv: np.ndarray,
    y: np.ndarray,
    target: Optional[np.ndarray],
    rows: np.ndarray,
    tol: Union[float, np.ndarray],
    between: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] = blend,
) -> Tuple[np.ndarray, np.ndarray]:
    """Binary search for the decision boundary on the path ``between(x, x_adv, a)``, ``a`` from 0 to 1.

    ``x_adv`` must be adversarial (and already queried). Each halving costs one
    query per sample; a sample stops when its interval is below ``tol`` or its
    budget is spent. Returns the adversarial end of each interval (a queried
    point, or ``x_adv`` itself) and its ``a``.
    """
    low = np.zeros(len(x))
    high = np.ones(len(x))
    best = x_adv.copy()
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), (len(x),))
    while True:
        active = np.flatnonzero((high - low > tol) & (oracle.remaining[rows] > 0))
        if active.size == 0:
            return best, high
        mid = (low[active] + high[active]) / 2
        points = between(x[active], x_adv[active], mid)
        hit = is_adversarial(oracle.labels(points, rows[active]), y[active], take(target, active))
        high[active] = np.where(hit, mid, high[active])
        low[active] = np.where(hit, low[active], mid)
        best[active[hit]] = points[hit]

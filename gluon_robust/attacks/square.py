"""Square Attack: random search over square-shaped updates, score-based.

Andriushchenko, Croce, Flammarion & Hein (2020), "Square Attack: a
query-efficient black-box adversarial attack via random search", ECCV,
https://arxiv.org/abs/1912.00049.

Distance: L-inf or L2 (fixed epsilon). Targeted and untargeted. Needs class
scores (logits or probabilities), never gradients.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..validation import check_positive
from .blackbox import BlackBoxAttack, QueryCounter, is_adversarial, lp_distance, margin, take

__all__ = ["SquareAttack", "p_schedule", "pseudo_gaussian", "square_pattern"]

#: Iterations, on the paper's 10,000-iteration scale, after which the square fraction p is halved.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_TINY = 1e-12


def p_schedule(p_init: float, iteration: int, budget: int) -> float:
    """The fraction of pixels a square covers at ``iteration`` (the paper's piecewise-constant schedule).

    ``p_init`` is halved at each of iterations 10, 50, 200, 500, 1000, 2000,
    4000, 6000 and 8000 of a 10,000-query run, rescaled to ``budget``.
    """
    scaled = int(iteration / budget * 10000)
    return p_init / 2 ** sum(scaled > t for t in _HALVINGS)


def pseudo_gaussian(rows: int, cols: int) -> np.ndarray:
    """The paper's centred pattern on a ``rows x cols`` rectangle, unit L2 norm.

    A pixel at Chebyshev distance ``m`` from the centre ``(rows // 2, cols // 2)``
    gets ``sum_{j=m+1}^{M} 1 / j^2`` with ``M = max(rows, cols) // 2 + 1``: a
    stack of nested squares, heaviest in the middle.
    """
    top = max(rows, cols) // 2 + 1
    tail = np.cumsum(1.0 / np.arange(top, 0, -1) ** 2)[::-1]  # tail[m] = sum_{j=m+1}^{top} 1/j^2
    r = np.abs(np.arange(rows) - rows // 2)[:, None]
    c = np.abs(np.arange(cols) - cols // 2)[None, :]
    pattern = tail[np.maximum(r, c)]
    return pattern / np.linalg.norm(pattern)


def square_pattern(size: int, rng: np.random.Generator) -> np.ndarray:
    """The L2 update of one square: two pseudo-Gaussian halves of opposite sign, randomly transposed, unit norm."""
    half = size // 2
    pattern = np.zeros((size, size))
    pattern[:half] = pseudo_gaussian(half, size)
    pattern[half:] = -pseudo_gaussian(size - half, size)
    pattern /= np.linalg.norm(pattern)
    return pattern.T if rng.random() < 0.5 else pattern


class SquareAttack(BlackBoxAttack):
    """Square Attack (Andriushchenko et al. 2020).

    Random search on the margin loss: at each iteration one square window of
    side ``s`` is redrawn and the change is kept if the loss decreases. The
    side follows the fraction ``p`` of the image covered by the square,
    ``s ~ sqrt(p * H * W)``, halved on the paper's schedule (see
    :func:`p_schedule`).

    * L-inf: the start is vertical stripes of ``+-eps``; an update sets the
      window to ``+-eps`` with one random sign per channel, so every point is
      a vertex of the eps-box (clipped to the bounds).
    * L2: the start is a grid of random-signed pseudo-Gaussian tiles scaled to
      ``eps``; an update moves the energy of a second random window, plus any
      unused budget, into the first window as a fresh pseudo-Gaussian square
      (:func:`square_pattern`) added to the window's normalised old content,
      and the whole perturbation is rescaled to ``eps``.

    The loss is the margin of the scores (:func:`~gluon_robust.attacks.blackbox.margin`),
    for the true class or, targeted, the target (the paper uses cross-entropy
    when targeted; the margin works on probabilities and logits alike). A
    sample stops as soon as it is adversarial.

    Parameters
    ----------
    eps : float
        Radius of the threat model, in pixel units.
    norm : str
        ``"linf"`` (default) or ``"l2"``.
    max_queries : int
        Per-sample budget (default 10,000); the start costs one query and
        each iteration one more.
    p_init : float, optional
        Initial fraction of pixels in a square, in (0, 1]; default 0.05 for
        L-inf and 0.1 for L2 (the paper's ImageNet values; small images such
        as MNIST digits also do well with larger ones).
    seed : int
        Seed of the random search.

    Notes
    -----
    Shapes: ``x`` (N, C, H, W) inside the bounds, ``y`` and ``target`` (N,).
    ``queries[i]`` is exactly the number of evaluations sample ``i`` cost.

    Examples
    --------
    >>> attack = SquareAttack(eps=0.3, max_queries=5000)
    >>> result = attack(model, x, y)                   # a Classifier or any scores callable
    >>> result.success.mean(), np.median(result.queries[result.success])
    >>> SquareAttack(eps=2.0, norm="l2")(model, x, y, target=t)
    """

    name = "square"
    norms = ("linf", "l2")

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        max_queries: int = 10000,
        p_init: Optional[float] = None,
        seed: int = 0,
    ) -> None:
        super().__init__(norm=norm, eps=check_positive("eps", eps), max_queries=max_queries, seed=seed)
        default = 0.05 if self.norm.name == "linf" else 0.1
        self.p_init = default if p_init is None else check_positive("p_init", p_init, upper=1.0)

    def _attack(
        self,
        oracle: QueryCounter,
        x: np.ndarray,
        y: np.ndarray,
        target: Optional[np.ndarray],
        rngs: Sequence[np.random.Generator],
    ) -> np.ndarray:
        low, high = oracle.bounds
        rows = np.arange(len(x))
        start = self._start_linf if self.norm.name == "linf" else self._start_l2
        best = np.clip(x + np.stack([start(x.shape[1:], rng) for rng in rngs]), low, high).astype(np.float32)
        scores = oracle.scores(best, rows)
        loss = margin(scores, y, target)
        done = is_adversarial(scores.argmax(axis=1), y, target)
        update = self._update_linf if self.norm.name == "linf" else self._update_l2
        iteration = 0
        while True:
            active = np.flatnonzero(~done & (oracle.remaining > 0))
            if active.size == 0:
                return best
            iteration += 1
            p = p_schedule(self.p_init, iteration, self.max_queries)
            candidates = np.stack([update(x[i], best[i], p, rngs[i], low, high) for i in active])
            scores = oracle.scores(candidates, active)
            new_loss = margin(scores, y[active], take(target, active))
            hit = is_adversarial(scores.argmax(axis=1), y[active], take(target, active))
            keep = (new_loss < loss[active]) | hit
            best[active[keep]] = candidates[keep]
            loss[active[keep]] = new_loss[keep]
            done[active] = hit

    # ------------------------------------------------------------------- L-inf
    def _start_linf(self, shape: tuple, rng: np.random.Generator) -> np.ndarray:
        c, _, w = shape
        return np.broadcast_to(self.eps * rng.choice([-1.0, 1.0], size=(c, 1, w)), shape).astype(np.float32)

    def _update_linf(
        self, x: np.ndarray, best: np.ndarray, p: float, rng: np.random.Generator, low: float, high: float
    ) -> np.ndarray:
        c, h, w = x.shape
        side = min(max(round(np.sqrt(p * h * w)), 1), max(min(h, w) - 1, 1))
        r, q = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        window = (slice(None), slice(r, r + side), slice(q, q + side))
        candidate = best.copy()
        for _ in range(10):  # redraw the signs until the window changes (it may already hold these signs)
            signs = rng.choice([-1.0, 1.0], size=(c, 1, 1))
            candidate[window] = np.clip(x[window] + self.eps * signs, low, high)
            if not np.array_equal(candidate[window], best[window]):
                break
        return candidate

    # ---------------------------------------------------------------------- L2
    def _start_l2(self, shape: tuple, rng: np.random.Generator) -> np.ndarray:
        c, h, w = shape
        tile = max(min(h, w) // 5, 1)
        delta = np.zeros(shape)
        top, left = (h - tile * (h // tile)) // 2, (w - tile * (w // tile)) // 2
        for r in range(top, top + tile * (h // tile), tile):
            for q in range(left, left + tile * (w // tile), tile):
                signs = rng.choice([-1.0, 1.0], size=(c, 1, 1))
                delta[:, r : r + tile, q : q + tile] += square_pattern(tile, rng)[None] * signs
        return (delta * self.eps / (np.linalg.norm(delta) + _TINY)).astype(np.float32)

    def _update_l2(
        self, x: np.ndarray, best: np.ndarray, p: float, rng: np.random.Generator, low: float, high: float
    ) -> np.ndarray:
        c, h, w = x.shape
        side = max(int(round(np.sqrt(p * h * w))), 3)
        side = min(side + (side % 2 == 0), min(h, w))  # odd, as in the paper, and inside the image
        r1, q1 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        r2, q2 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        first = (slice(None), slice(r1, r1 + side), slice(q1, q1 + side))
        second = (slice(None), slice(r2, r2 + side), slice(q2, q2 + side))
        delta = (best - x).astype(np.float64)
        union = np.zeros(x.shape, bool)
        union[first] = True
        union[second] = True
        moved = float((delta[union] ** 2).sum())  # the energy of both windows ...
        unused = max(self.eps**2 - float((delta**2).sum()), 0.0)  # ... plus what clipping left unspent
        old = delta[first] / (np.sqrt((delta[first] ** 2).sum(axis=(1, 2), keepdims=True)) + 1e-10)
        fresh = square_pattern(side, rng)[None] * rng.choice([-1.0, 1.0], size=(c, 1, 1)) + old
        fresh *= np.sqrt((moved + unused) / c) / (np.sqrt((fresh**2).sum(axis=(1, 2), keepdims=True)) + _TINY)
        delta[second] = 0.0
        delta[first] = fresh
        delta *= self.eps / (lp_distance("l2", delta[None])[0] + _TINY)
        return np.clip(x + delta, low, high).astype(np.float32)

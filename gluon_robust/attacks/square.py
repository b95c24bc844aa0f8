"""Square Attack: random search over square-shaped updates, score-based.

Andriushchenko, Croce, Flammarion & Hein (2020), "Square Attack: a
query-efficient black-box adversarial attack via random search", ECCV,
https://arxiv.org/abs/1912.00049 (Algorithms 1 to 3).

Distance: L-inf or L2 (fixed epsilon). Targeted and untargeted. Needs class
scores (logits or probabilities), never gradients. The defaults and the
details follow the version AutoAttack runs (Croce & Hein 2020,
https://arxiv.org/abs/2003.01690, reference ``square.py``): see
:class:`SquareAttack`, and ``tests/test_reference_trajectories.py`` for the
iterate-by-iterate check against an independent NumPy implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import ConfigError
from ..validation import check_positive
from .blackbox import BlackBoxAttack, QueryCounter, margin, take
from .norms import L2Norm, get_norm

__all__ = ["SquareAttack", "SquareStep", "p_schedule", "pseudo_gaussian", "square_pattern", "square_side"]

#: Iterations after which the square fraction p is halved (the paper's 10,000-iteration schedule).
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_TINY = 1e-12
_L2 = L2Norm()


def p_schedule(p_init: float, iteration: int, iterations: Optional[int] = None) -> float:
    """The fraction of pixels a square covers at 0-based ``iteration``.

    ``p_init`` is halved once for each of 10, 50, 200, 500, 1000, 2000, 4000,
    6000 and 8000 that ``iteration`` exceeds: iterations 0 to 10 use
    ``p_init``, 11 to 50 ``p_init / 2``, ..., beyond 8000 ``p_init / 512``.
    With ``iterations`` (the run's iteration budget) the iteration is first
    rescaled to the paper's 10,000-iteration scale,
    ``int(iteration / iterations * 10000)`` (the schedule of the paper and of
    the reference code's ``resc_schedule=True``); without it (None) the raw
    iteration is used, as AutoAttack runs Square (``resc_schedule=False``).
    """
    if iterations is not None:
        iteration = int(iteration / iterations * 10000)
    return p_init / 2 ** sum(iteration > t for t in _HALVINGS)


def square_side(p: float, h: int, w: int, norm: str) -> int:
    """The side of the square for fraction ``p`` of an ``h x w`` image.

    ``round(sqrt(p * h * w))`` (Python's round), at least 1 for L-inf and at
    least 3 and odd for L2, at most ``min(h, w)``.
    """
    smallest, odd = get_norm(norm).choose(linf=(1, False), otherwise=(3, True))
    side = max(int(round(math.sqrt(p * h * w))), smallest)
    if odd:
        side += side % 2 == 0
    return min(side, min(h, w))


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
    """The L2 update of one square: two pseudo-Gaussian halves of opposite sign, unit norm.

    Draws one ``rng.random()``: above 0.5 the pattern is transposed (left and
    right halves instead of top and bottom).
    """
    half = size // 2
    pattern = np.zeros((size, size))
    pattern[:half] = pseudo_gaussian(half, size)
    pattern[half:] = -pseudo_gaussian(size - half, size)
    pattern /= np.linalg.norm(pattern)
    return pattern.T if rng.random() > 0.5 else pattern


_SIGNS = np.array([-1.0, 1.0])


def _signs(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Uniform random signs: the draws of ``rng.choice([-1.0, 1.0], size=shape)``, without its per-call overhead."""
    return _SIGNS[rng.integers(0, 2, size=shape, dtype=np.int64)]


@dataclass(frozen=True)
class SquareStep:
    """One observation of a Square run, handed to the ``trace`` hook.

    Attributes
    ----------
    iteration : int
        0 for the start (after its query), ``i + 1`` after 0-based iteration ``i``.
    samples : numpy.ndarray of int, (M,)
        The samples that queried at this iteration (rows of the de-duplicated batch).
    p : float
        The square fraction of this iteration (``p_init`` at the start).
    candidate : numpy.ndarray, (M, C, H, W)
        The points queried.
    x_best, margin : numpy.ndarray
        The samples' best points and their margins after the update.
    """

    iteration: int
    samples: np.ndarray
    p: float
    candidate: np.ndarray
    x_best: np.ndarray
    margin: np.ndarray


class SquareAttack(BlackBoxAttack):
    """Square Attack (Andriushchenko et al. 2020), as AutoAttack runs it.

    Random search: at each iteration one square window of side ``s``
    (:func:`square_side` of the fraction ``p`` of :func:`p_schedule`) is
    redrawn and the change is kept if the loss decreases.

    * L-inf: the start is vertical stripes of ``+-eps`` (one sign per channel
      and column); an update sets the window to ``x +- eps`` with one random
      sign per channel, so every point is a vertex of the eps-box (clipped to
      the bounds). As in AutoAttack the signs are not redrawn when they leave
      the window unchanged (the paper's original code redraws them).
    * L2: the start is the reference's grid of random-signed pseudo-Gaussian
      tiles of side ``H // 5`` (see ``_start_l2``), scaled to ``eps``; an update moves the energy of a second random window, plus the
      unused budget, into the first window, channel by channel: per channel
      the new window is a fresh pseudo-Gaussian square
      (:func:`square_pattern`, random sign) plus the window's old content
      normalised, rescaled to the channel's energy in both windows plus
      ``(eps^2 - ||delta||^2) / C``; the second window is zeroed and the whole
      perturbation rescaled to ``eps``.

    Loss and stopping, as in the reference: the margin ``m = z_y - max_{j != y}
    z_j`` (targeted: ``max_{j != t} z_j - z_t``) of the scores; the search
    minimises ``m`` (untargeted) or the cross-entropy of the target class on
    the scores (targeted). A candidate is kept when its loss is strictly
    lower, or when its margin is ``<= 0``; a sample stops as soon as its
    margin is ``<= 0``.

    Random draws, per sample, from its own generator: the L-inf start is
    ``rng.choice([-1., 1.], size=(C, 1, W))``; an L-inf iteration draws the
    window's top row ``rng.integers(0, max(H - s, 1))``, then its left column
    ``rng.integers(0, max(W - s, 1))`` (the reference's positions
    ``0 .. H - s - 1``: the last position is never drawn), then
    ``rng.choice([-1., 1.], size=(C, 1, 1))``. The L2 start visits its tiles
    row by row and draws for each the pattern's transposition (one
    ``rng.random()``, see :func:`square_pattern`) then
    ``rng.choice([-1., 1.], size=(C, 1, 1))``; an L2 iteration draws the first
    window's row and column, the second window's row and column, the
    pattern's transposition and the signs, in that order. The reference draws
    each of these once for the whole batch; one generator per sample keeps a
    sample's result independent of its batch.

    Differences from the reference that do not change a successful sample:
    samples the model already misclassifies are attacked too (their start is
    usually adversarial already), and a sample never fooled returns its
    lowest-loss point (the reference returns the clean input).

    Parameters
    ----------
    eps : float
        Radius of the threat model, in pixel units.
    norm : str
        ``"linf"`` (default) or ``"l2"``.
    max_queries : int
        Per-sample budget of model evaluations (default 10,000): the start
        costs one query and each iteration one more, so ``max_queries - 1``
        iterations. AutoAttack's ``n_queries=5000`` counts iterations: it is
        ``max_queries=5001`` here.
    p_init : float
        Initial fraction of pixels in a square, in (0, 1]; default 0.8, the
        value AutoAttack uses for L-inf and L2 alike (the paper's ImageNet
        values are 0.05 for L-inf and 0.1 for L2).
    rescale_schedule : bool
        Keyword-only. False (default, as AutoAttack): the halvings of ``p``
        happen at raw iterations 10, 50, 200, ..., 8000. True: the paper's
        schedule, stretched to the budget (iteration ``i`` of ``n`` is
        iteration ``int(i / n * 10000)`` of the 10,000-iteration schedule).
    seed : int
        Seed of the random search.
    trace : callable, optional
        Keyword-only hook called with a :class:`SquareStep` after the start
        and after every iteration, for tests and diagnostics.

    Notes
    -----
    Shapes: ``x`` (N, C, H, W) inside the bounds, ``y`` and ``target`` (N,).
    ``queries[i]`` is exactly the number of evaluations sample ``i`` cost.

    Examples
    --------
    >>> attack = SquareAttack(eps=0.3, max_queries=5001)
    >>> result = attack(model, x, y)                   # a Classifier or any scores callable
    >>> result.success.mean(), np.median(result.queries[result.success])
    >>> SquareAttack(eps=2.0, norm="l2")(model, x, y, target=t)
    """

    name = "square"
    norms = ("linf", "l2")

    def __init__(self, *, eps: float, norm: str = "linf", max_queries: int = 10000, p_init: float = 0.8,
                 rescale_schedule: bool = False, seed: int = 0,
                 trace: Optional[Callable[[SquareStep], None]] = None) -> None:
        super().__init__(norm=norm, eps=check_positive("eps", eps), max_queries=max_queries, seed=seed)
        self.p_init = check_positive("p_init", p_init, upper=1.0)
        if not isinstance(rescale_schedule, (bool, np.bool_)):
            raise ConfigError(f"rescale_schedule must be True or False, got {rescale_schedule!r}")
        self.rescale_schedule = bool(rescale_schedule)
        if trace is not None and not callable(trace):
            raise ConfigError(f"trace must be a callable or None, got {trace!r}")
        self._trace = trace

    def _attack(self, oracle: QueryCounter, x: np.ndarray, y: np.ndarray, target: Optional[np.ndarray],
                rngs: Sequence[np.random.Generator]) -> np.ndarray:
        low, high = oracle.bounds
        rows = np.arange(len(x))
        start = self.norm.choose(linf=self._start_linf, otherwise=self._start_l2)
        best = np.clip(x + np.stack([start(x.shape[1:], rng) for rng in rngs]), low, high).astype(np.float32)
        scores = oracle.scores(best, rows)
        margins = margin(scores, y, target)
        loss = self._loss(scores, margins, target)
        self._observe(0, rows, self.p_init, best, best, margins)
        candidates_of = self.norm.choose(linf=self._candidates_linf, otherwise=self._candidates_l2)
        budget = self.max_queries - 1 if self.rescale_schedule else None
        iteration = 0
        while True:
            active = np.flatnonzero((margins > 0) & (oracle.remaining > 0))
            if active.size == 0:
                return best
            p = p_schedule(self.p_init, iteration, budget)
            candidates = candidates_of(x, best, active, p, rngs, low, high)
            scores = oracle.scores(candidates, active)
            new_margin = margin(scores, y[active], take(target, active))
            new_loss = self._loss(scores, new_margin, take(target, active))
            improved = new_loss < loss[active]
            keep = improved | (new_margin <= 0)
            loss[active[improved]] = new_loss[improved]
            margins[active[keep]] = new_margin[keep]
            best[active[keep]] = candidates[keep]
            iteration += 1
            self._observe(iteration, active, p, candidates, best[active], margins[active])

    @staticmethod
    def _loss(scores: np.ndarray, margins: np.ndarray, target: Optional[np.ndarray]) -> np.ndarray:
        """The objective to minimise: the margin, or (targeted) the target's cross-entropy on the scores."""
        if target is None:
            return margins
        z = scores.astype(np.float64)
        top = z.max(axis=1)
        log_sum = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
        return log_sum - z[np.arange(len(z)), target]

    def _observe(self, iteration: int, rows: np.ndarray, p: float, candidate: np.ndarray, best: np.ndarray,
                 margins: np.ndarray) -> None:
        if self._trace is not None:
            self._trace(SquareStep(iteration=iteration, samples=rows.copy(), p=p, candidate=candidate.copy(),
                                   x_best=best.copy(), margin=margins.copy()))

    # ------------------------------------------------------------------- L-inf
    def _start_linf(self, shape: tuple, rng: np.random.Generator) -> np.ndarray:
        c, _, w = shape
        return np.broadcast_to(self.eps * _signs(rng, (c, 1, w)), shape)

    def _update_linf(
        self, x: np.ndarray, best: np.ndarray, p: float, rng: np.random.Generator, low: float, high: float
    ) -> np.ndarray:
        return self._candidates_linf(x[None], best[None], np.zeros(1, np.int64), p, [rng], low, high)[0]

    def _candidates_linf(
        self, x: np.ndarray, best: np.ndarray, active: np.ndarray, p: float, rngs: Sequence[np.random.Generator],
        low: float, high: float,
    ) -> np.ndarray:
        """One candidate per active sample: its best point with one window set to ``x + eps * signs``.

        The batch is copied once and each window written in place; every
        sample draws from its own generator, in the documented order.
        ``minimum(maximum(.))`` is ``np.clip`` for finite values, without its
        per-call dispatch cost.
        """
        c, h, w = x.shape[1:]
        side = square_side(p, h, w, "linf")
        candidates = best[active]
        for j, i in enumerate(active):
            rng = rngs[i]
            r, q = rng.integers(0, max(h - side, 1)), rng.integers(0, max(w - side, 1))
            window = x[i, :, r : r + side, q : q + side] + self.eps * _signs(rng, (c, 1, 1))
            candidates[j, :, r : r + side, q : q + side] = np.minimum(np.maximum(window, low), high)
        return candidates

    # ---------------------------------------------------------------------- L2
    def _candidates_l2(
        self, x: np.ndarray, best: np.ndarray, active: np.ndarray, p: float, rngs: Sequence[np.random.Generator],
        low: float, high: float,
    ) -> np.ndarray:
        """One candidate per active sample, from :meth:`_update_l2`."""
        return np.stack([self._update_l2(x[i], best[i], p, rngs[i], low, high) for i in active])

    def _start_l2(self, shape: tuple, rng: np.random.Generator) -> np.ndarray:
        # The reference's grid: tiles of side s = H // 5 from row and column (H - 5 s) // 2, H // s rows of
        # W // s tiles; a tile reaching past the image is cut (and still draws), as the reference's slices do.
        c, h, w = shape
        tile = max(h // 5, 1)
        first = max((h - 5 * tile) // 2, 0)
        delta = np.zeros(shape)
        for a in range(h // tile):
            for b in range(w // tile):
                r, q = first + a * tile, first + b * tile
                pattern = square_pattern(tile, rng)[None] * _signs(rng, (c, 1, 1))
                block = delta[:, r : r + tile, q : q + tile]
                block += pattern[:, : block.shape[1], : block.shape[2]]
        return delta * self.eps / (np.linalg.norm(delta) + _TINY)

    def _update_l2(
        self, x: np.ndarray, best: np.ndarray, p: float, rng: np.random.Generator, low: float, high: float
    ) -> np.ndarray:
        c, h, w = x.shape
        side = square_side(p, h, w, "l2")
        r1, q1 = rng.integers(0, max(h - side, 1)), rng.integers(0, max(w - side, 1))
        r2, q2 = rng.integers(0, max(h - side, 1)), rng.integers(0, max(w - side, 1))
        first = (slice(None), slice(r1, r1 + side), slice(q1, q1 + side))
        second = (slice(None), slice(r2, r2 + side), slice(q2, q2 + side))
        delta = best.astype(np.float64) - x
        union = np.zeros(x.shape, bool)
        union[first] = True
        union[second] = True
        moved = ((delta * union) ** 2).sum(axis=(1, 2), keepdims=True)  # per channel: the energy of both windows ...
        unused = max(self.eps**2 - float((delta**2).sum()), 0.0) / c  # ... plus a share of the unspent budget
        old = delta[first] / (np.sqrt((delta[first] ** 2).sum(axis=(1, 2), keepdims=True)) + _TINY)
        fresh = square_pattern(side, rng)[None] * _signs(rng, (c, 1, 1)) + old
        fresh *= np.sqrt(unused + moved) / (np.sqrt((fresh**2).sum(axis=(1, 2), keepdims=True)) + _TINY)
        delta[second] = 0.0
        delta[first] = fresh
        delta *= self.eps / (_L2.distance(delta[None])[0] + _TINY)
        return np.clip(x + delta, low, high).astype(np.float32)

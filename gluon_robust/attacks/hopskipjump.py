"""HopSkipJump: decision-based attack by gradient-direction estimates at the boundary.

Chen, Jordan & Wainwright (2020), "HopSkipJumpAttack: A Query-Efficient
Decision-Based Attack", IEEE S&P, https://arxiv.org/abs/1904.02144.

Distance: L2 or L-inf; minimal perturbation, or stopped at a fixed epsilon.
Targeted and untargeted. Sees predicted labels only.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..validation import check_int, check_positive
from .base import AttackKind
from .blackbox import (
    BlackBoxAttack, QueryCounter, blend, boundary_search, is_adversarial, noise_start, per_sample, take,
)
from .norms import L2Norm, LinfNorm

__all__ = ["HopSkipJump"]

_TINY = 1e-12
_L2 = L2Norm()
_LINF = LinfNorm()
#: Halvings of the geometric step-size search before a sample gives up on a step.
_MAX_HALVINGS = 30



def box(x: np.ndarray, x_adv: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The L-inf path: ``x_adv`` clipped to the box of radius ``alpha * ||x_adv - x||_inf`` around ``x``."""
    radius = per_sample(alpha * _LINF.distance(x_adv - x), x).astype(np.float32)
    return np.clip(x_adv, x - radius, x + radius).astype(np.float32)


class HopSkipJump(BlackBoxAttack):
    """HopSkipJumpAttack (Chen et al. 2020), L2 and L-inf.

    The attack walks along the decision boundary toward the clean input,
    using labels only:

    1. *Start*: one query of the clean input (already adversarial: done), then
       uniform noise until adversarial (``init_tries`` draws at most; a sample
       that finds none fails), and a binary search towards ``x``.
    2. *Binary search* to the boundary on the path from ``x`` to the current
       point: the blend ``(1 - a) x + a x_adv`` for L2, the box
       ``clip(x_adv, x - a r, x + a r)`` for L-inf, down to ``a``-tolerance
       ``theta = gamma / d^{3/2}`` (L2) or ``gamma / d^2`` (L-inf).
    3. *Gradient direction* at the boundary point from ``B_t = B_0 sqrt(t)``
       random unit probes at radius ``delta_t`` (``sqrt(d) theta dist`` for
       L2, ``d theta dist`` for L-inf; 10% of the pixel range at ``t = 1``):
       the mean of ``phi_b u_b`` with ``phi = +-1`` for adversarial or not,
       minus its mean when the answers are mixed (the paper's baseline).
    4. *Geometric step search*: step ``xi = dist / sqrt(t)`` along the
       direction (its sign for L-inf), halved until the point is adversarial.

    then back to 2. Each sample keeps its closest adversarial point; every
    point it returns was queried.

    Parameters
    ----------
    norm : str
        ``"l2"`` (default) or ``"linf"``.
    eps : float, optional
        Stop a sample once its distance is within ``eps``, and make the
        result a fixed-epsilon one (success means adversarial within ``eps``;
        a sample that never got there returns its clean input). None
        (default): minimal perturbation, run until the budget is spent.
    max_queries : int
        Per-sample budget (default 10,000).
    steps : int, optional
        Maximum iterations of 2-4; default None (until the budget or ``eps``).
    initial_evals : int
        ``B_0``, probes of the first gradient estimate (default 100).
    max_evals : int
        Cap on the probes of one estimate (default 10,000).
    gamma : float
        Scale of the binary-search tolerance ``theta`` (default 1.0).
    init_tries : int
        Uniform-noise draws to find a start (default 100). A targeted attack
        needs one classified as the target, which noise may not give.
    seed : int
        Seed of the noise and the probes.

    Notes
    -----
    Shapes: ``x`` (N, C, H, W), ``y`` and ``target`` (N,). All samples
    advance in lockstep, each with its own generator and budget, so a
    sample's result does not depend on its batch. The target may return
    labels only (a callable returning (N,) ints); scores are reduced to their
    argmax before the attack sees them.

    Examples
    --------
    >>> attack = HopSkipJump(norm="linf", eps=0.3, max_queries=5000)
    >>> result = attack(model, x, y)                  # a Classifier or any labels callable
    >>> HopSkipJump(norm="l2", max_queries=2000)(endpoint, x, y).distance
    """

    name = "hopskipjump"
    norms = ("l2", "linf")
    kind = AttackKind.BLACK_BOX_MINIMUM_NORM
    labels_only = True

    def __init__(self, *, norm: str = "l2", eps: Optional[float] = None, max_queries: int = 10000,
                 steps: Optional[int] = None, initial_evals: int = 100, max_evals: int = 10000, gamma: float = 1.0,
                 init_tries: int = 100, seed: int = 0) -> None:
        super().__init__(norm=norm, eps=None if eps is None else check_positive("eps", eps), max_queries=max_queries,
                         seed=seed)
        self.steps = None if steps is None else check_int("steps", steps)
        self.initial_evals = check_int("initial_evals", initial_evals)
        self.max_evals = check_int("max_evals", max_evals)
        self.gamma = check_positive("gamma", gamma)
        self.init_tries = check_int("init_tries", init_tries)

    def _attack(self, oracle: QueryCounter, x: np.ndarray, y: np.ndarray, target: Optional[np.ndarray],
                rngs: Sequence[np.random.Generator]) -> np.ndarray:
        d = int(np.prod(x.shape[1:]))
        theta = self.gamma / self.norm.choose(l2=d**1.5, otherwise=d**2)
        path = self.norm.choose(l2=blend, otherwise=box)
        rows = np.arange(len(x))

        clean_adv = is_adversarial(oracle.labels(x, rows), y, target)
        need = np.flatnonzero(~clean_adv)
        current = x.copy()
        current[need], found = noise_start(oracle, x[need], y[need], take(target, need), need,
                                           [rngs[i] for i in need], self.init_tries)
        alive = need[found]
        best = x.copy()
        best_dist = np.where(clean_adv, 0.0, np.inf)
        if alive.size:  # from the noise to near x by blending, then onto the boundary along the norm's path
            sub = take(target, alive)
            current[alive], _ = boundary_search(oracle, x[alive], current[alive], y[alive], sub, alive, tol=1e-3)
            current[alive], _ = boundary_search(oracle, x[alive], current[alive], y[alive], sub, alive, tol=theta,
                                                between=path)
        self._keep_best(x, current, alive, best, best_dist)

        t = 0
        while True:
            alive = alive[(oracle.remaining[alive] > 0) & ~self._reached(best_dist[alive])]
            if alive.size == 0 or (self.steps is not None and t >= self.steps):
                break
            t += 1
            sub = take(target, alive)
            dist = self.norm.distance(current[alive] - x[alive])
            direction = self._gradient_direction(oracle, current[alive], y[alive], sub, alive, rngs, t, dist, theta, d)
            stepped = self._step_search(oracle, x[alive], current[alive], direction, y[alive], sub, alive, dist / np.sqrt(t))
            current[alive], _ = boundary_search(oracle, x[alive], stepped, y[alive], sub, alive, tol=theta, between=path)
            self._keep_best(x, current, alive, best, best_dist)
        if self.eps is not None:  # fixed-epsilon result: a sample not brought within eps keeps its clean input
            best[~self._reached(best_dist)] = x[~self._reached(best_dist)]
        return best

    def _reached(self, dist: np.ndarray) -> np.ndarray:
        return np.zeros(len(dist), bool) if self.eps is None else dist <= self.eps

    def _keep_best(self, x: np.ndarray, current: np.ndarray, rows: np.ndarray, best: np.ndarray, best_dist: np.ndarray) -> None:
        """Record, per sample of ``rows``, the current boundary point if it is the closest so far (in place)."""
        dist = self.norm.distance(current[rows] - x[rows])
        closer = dist < best_dist[rows]
        best[rows[closer]] = current[rows[closer]]
        best_dist[rows[closer]] = dist[closer]

    def _gradient_direction(self, oracle: QueryCounter, points: np.ndarray, y: np.ndarray,
                            target: Optional[np.ndarray], rows: np.ndarray, rngs: Sequence[np.random.Generator],
                            t: int, dist: np.ndarray, theta: float, d: int) -> np.ndarray:
        """The estimated unit gradient direction of the adversarial region at each boundary point (step 3)."""
        low, high = oracle.bounds
        draw = self.norm.choose(l2="standard_normal", otherwise="uniform")  # the paper's probes per norm
        scale = self.norm.choose(l2=np.sqrt(d), otherwise=d)
        evals = min(int(self.initial_evals * np.sqrt(t)), self.max_evals)
        direction = np.zeros(points.shape, np.float64)
        for j, row in enumerate(rows):
            count = min(evals, int(oracle.remaining[row]))
            if count == 0:
                continue
            shape = (count,) + points.shape[1:]
            probes = rngs[row].standard_normal(shape) if draw == "standard_normal" else rngs[row].uniform(-1.0, 1.0, shape)
            probes /= per_sample(_L2.distance(probes) + _TINY, probes)
            if t == 1:
                delta = 0.1 * (high - low)
            else:
                delta = scale * theta * dist[j]
            perturbed = np.clip(points[j] + delta * probes, low, high).astype(np.float32)
            probes = (perturbed - points[j]) / delta
            phi = np.where(
                is_adversarial(oracle.labels(perturbed, np.full(count, row)), np.full(count, y[j]),
                               take(target, np.full(count, j))),
                1.0, -1.0,
            )
            if abs(phi.mean()) < 1.0:  # mixed answers: subtract the baseline
                phi = phi - phi.mean()
            grad = np.tensordot(phi, probes, axes=1) / count
            direction[j] = self.norm.direction(grad[None] / (_L2.distance(grad[None]) + _TINY))[0]
        return direction

    def _step_search(
        self,
        oracle: QueryCounter,
        x: np.ndarray,
        points: np.ndarray,
        direction: np.ndarray,
        y: np.ndarray,
        target: Optional[np.ndarray],
        rows: np.ndarray,
        size: np.ndarray,
    ) -> np.ndarray:
        """Step 4: from each boundary point along its direction, halving the step until adversarial.

        A sample that runs out of budget or of halvings keeps its boundary point.
        """
        low, high = oracle.bounds
        out = points.copy()
        size = size.astype(np.float64).copy()
        pending = np.ones(len(points), bool)
        for _ in range(_MAX_HALVINGS):
            todo = np.flatnonzero(pending & (oracle.remaining[rows] > 0))
            if todo.size == 0:
                break
            trial = np.clip(points[todo] + per_sample(size[todo], direction[todo]) * direction[todo], low, high)
            trial = trial.astype(np.float32)
            hit = is_adversarial(oracle.labels(trial, rows[todo]), y[todo], take(target, todo))
            out[todo[hit]] = trial[hit]
            pending[todo[hit]] = False
            size[todo[~hit]] /= 2
        return out


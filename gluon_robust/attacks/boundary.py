"""The Boundary Attack: a random walk along the decision boundary, decision-based.

Brendel, Rauber & Bethge (2018), "Decision-Based Adversarial Attacks:
Reliable Attacks Against Black-Box Machine Learning Models", ICLR,
https://arxiv.org/abs/1712.04248.

Distance: L2 only (the walk's geometry is Euclidean: spheres around the
clean input); use HopSkipJump for L-inf. Minimal perturbation, or stopped at
a fixed epsilon. Targeted and untargeted. Sees predicted labels only.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import ConfigError
from ..validation import check_int, check_positive
from .base import AttackKind
from .blackbox import (
    BlackBoxAttack, QueryCounter, boundary_search, is_adversarial, noise_start, per_sample, take,
)
from .norms import L2Norm

__all__ = ["BoundaryAttack"]

_TINY = 1e-12
_L2 = L2Norm()
#: Trials per sample between two step-size adaptations, and the window of success statistics.
_ADAPT_EVERY = 10
_WINDOW = 30



class BoundaryAttack(BlackBoxAttack):
    """The Boundary Attack (Brendel et al. 2018), L2.

    From an adversarial start (one query of the clean input, then uniform
    noise, see :func:`~gluon_robust.attacks.blackbox.noise_start`, and a
    binary search towards the clean input), each step of a sample at distance
    ``r = ||x_adv - x||_2``:

    1. *orthogonal step*: a Gaussian draw made orthogonal to ``x_adv - x``,
       scaled to ``spherical_step * r``, added, and the result put back on the
       sphere of radius ``r`` around ``x``;
    2. *step towards the original*: that point moved a fraction
       ``source_step`` of its distance towards ``x``.

    Both points are clipped to the bounds. The spherical candidate is queried
    first; only if it is adversarial is the final candidate queried (a
    candidate closer to ``x`` on a non-adversarial ray is almost never
    adversarial), and an adversarial final candidate becomes the new point.
    So a step costs one or two queries. Every ten trials the step sizes adapt,
    as in the paper, to the success rates over the last thirty: a spherical
    rate above 1/2 multiplies both steps by ``step_adaptation`` and one below
    1/5 divides them; a final-step rate (among adversarial spherical
    candidates) above 1/2 or below 1/5 does the same to ``source_step`` alone.

    Parameters
    ----------
    eps : float, optional
        Stop a sample once its L2 distance is within ``eps``, and make the
        result a fixed-epsilon one (success means adversarial within ``eps``;
        a sample that never got there returns its clean input). None
        (default): minimal perturbation, run until the budget is spent.
    norm : str
        ``"l2"``, the only one.
    max_queries : int
        Per-sample budget (default 10,000).
    steps : int, optional
        Maximum walk steps; default None (until the budget or ``eps``).
    spherical_step : float
        Initial relative size of the orthogonal step (default 0.01).
    source_step : float
        Initial fraction of the distance removed per step (default 0.01).
    step_adaptation : float
        Factor of the step-size adaptation, > 1 (default 1.5).
    init_tries : int
        Noise draws to find a start (default 100).
    seed : int
        Seed of the start and the walk.

    Notes
    -----
    Shapes: ``x`` (N, C, H, W), ``y`` and ``target`` (N,). The walk keeps
    only adversarial points, so every point it returns was queried and
    adversarial (or is the clean input).

    Examples
    --------
    >>> attack = BoundaryAttack(max_queries=5000)
    >>> result = attack(model, x, y)                  # labels are all it needs
    >>> BoundaryAttack(eps=2.0)(endpoint, x, y).success.mean()
    """

    name = "boundary"
    norms = ("l2",)
    kind = AttackKind.BLACK_BOX_MINIMUM_NORM
    labels_only = True

    def __init__(self, *, eps: Optional[float] = None, norm: str = "l2", max_queries: int = 10000,
                 steps: Optional[int] = None, spherical_step: float = 0.01, source_step: float = 0.01,
                 step_adaptation: float = 1.5, init_tries: int = 100, seed: int = 0) -> None:
        super().__init__(norm=norm, eps=None if eps is None else check_positive("eps", eps), max_queries=max_queries,
                         seed=seed)
        self.steps = None if steps is None else check_int("steps", steps)
        self.spherical_step = check_positive("spherical_step", spherical_step, upper=1.0)
        self.source_step = check_positive("source_step", source_step, upper=1.0)
        self.step_adaptation = check_positive("step_adaptation", step_adaptation)
        if self.step_adaptation <= 1.0:
            raise ConfigError(f"step_adaptation must be > 1, got {step_adaptation!r}")
        self.init_tries = check_int("init_tries", init_tries)

    def _attack(self, oracle: QueryCounter, x: np.ndarray, y: np.ndarray, target: Optional[np.ndarray],
                rngs: Sequence[np.random.Generator]) -> np.ndarray:
        low, high = oracle.bounds
        n = len(x)
        rows = np.arange(n)
        clean_adv = is_adversarial(oracle.labels(x, rows), y, target)
        need = np.flatnonzero(~clean_adv)
        current = x.copy()
        current[need], found = noise_start(oracle, x[need], y[need], take(target, need), need,
                                           [rngs[i] for i in need], self.init_tries)
        alive = need[found]
        if alive.size:
            current[alive], _ = boundary_search(oracle, x[alive], current[alive], y[alive], take(target, alive), alive,
                                                tol=1e-3)

        spherical = np.full(n, self.spherical_step)
        source = np.full(n, self.source_step)
        sph_hits = np.zeros((n, _WINDOW))  # ring buffers of recent outcomes (nan = no record)
        src_hits = np.full((n, _WINDOW), np.nan)
        trials = 0
        while True:
            dist = _L2.distance(current - x)
            alive = alive[(oracle.remaining[alive] > 0) & ~self._reached(dist[alive])]
            if alive.size == 0 or (self.steps is not None and trials >= self.steps):
                break
            sub = take(target, alive)
            sphere, final = self._candidates(x[alive], current[alive], dist[alive], spherical[alive], source[alive],
                                             [rngs[i] for i in alive], low, high)
            on_sphere = is_adversarial(oracle.labels(sphere, alive), y[alive], sub)
            ask = np.flatnonzero(on_sphere & (oracle.remaining[alive] > 0))
            accepted = np.zeros(len(alive), bool)
            if ask.size:
                accepted[ask] = is_adversarial(oracle.labels(final[ask], alive[ask]), y[alive[ask]],
                                               take(sub, ask))
            current[alive[accepted]] = final[accepted]
            slot = trials % _WINDOW
            sph_hits[alive, slot] = on_sphere
            src_hits[alive, slot] = np.where(on_sphere, accepted, np.nan)
            trials += 1
            if trials % _ADAPT_EVERY == 0:
                self._adapt(alive, sph_hits, src_hits, spherical, source, min(trials, _WINDOW))
        if self.eps is not None:  # fixed-epsilon result: a sample not brought within eps keeps its clean input
            far = ~self._reached(_L2.distance(current - x))
            current[far] = x[far]
        return current

    def _reached(self, dist: np.ndarray) -> np.ndarray:
        return np.zeros(len(dist), bool) if self.eps is None else dist <= self.eps

    def _candidates(
        self,
        x: np.ndarray,
        current: np.ndarray,
        dist: np.ndarray,
        spherical: np.ndarray,
        source: np.ndarray,
        rngs: Sequence[np.random.Generator],
        low: float,
        high: float,
    ) -> tuple:
        """The spherical and the final candidate of each sample (steps 1 and 2)."""
        towards = (current - x).astype(np.float64)
        unit = towards / per_sample(dist + _TINY, towards)
        noise = np.stack([rng.standard_normal(x.shape[1:]) for rng in rngs])
        noise -= unit * per_sample((noise * unit).reshape(len(x), -1).sum(axis=1), noise)  # orthogonal to x_adv - x
        noise *= per_sample(spherical * dist / (_L2.distance(noise) + _TINY), noise)
        moved = towards + noise
        moved *= per_sample(dist / (_L2.distance(moved) + _TINY), moved)  # back on the sphere of radius dist
        sphere = np.clip(x + moved, low, high).astype(np.float32)
        final = np.clip(x + (sphere - x) * per_sample(1.0 - source, x), low, high).astype(np.float32)
        return sphere, final

    def _adapt(
        self,
        rows: np.ndarray,
        sph_hits: np.ndarray,
        src_hits: np.ndarray,
        spherical: np.ndarray,
        source: np.ndarray,
        filled: int,
    ) -> None:
        """Adapt the step sizes of ``rows`` to their recent success rates (in place)."""
        factor = self.step_adaptation
        p_sphere = sph_hits[rows, :filled].mean(axis=1)
        recorded = ~np.isnan(src_hits[rows, :filled])
        p_source = np.where(recorded.any(axis=1),
                            np.nansum(src_hits[rows, :filled], axis=1) / np.maximum(recorded.sum(axis=1), 1), 0.0)
        scale = np.where(p_sphere > 0.5, factor, np.where(p_sphere < 0.2, 1.0 / factor, 1.0))
        spherical[rows] = np.minimum(spherical[rows] * scale, 1.0)
        source_scale = scale * np.where(p_source > 0.5, factor, np.where(p_source < 0.2, 1.0 / factor, 1.0))
        source[rows] = np.minimum(source[rows] * source_scale, 0.5)

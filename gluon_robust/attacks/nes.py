"""NES: projected gradient descent on a gradient estimated by natural evolution strategies.

Ilyas, Engstrom, Athalye & Lin (2018), "Black-box Adversarial Attacks with
Limited Queries and Information", ICML, https://arxiv.org/abs/1804.08598.

Distance: L-inf or L2 (fixed epsilon). Targeted and untargeted. Needs class scores.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np

from ..validation import check_int, check_positive
from .blackbox import GradientEstimationAttack, QueryCounter, margin, take

__all__ = ["NES"]


class NES(GradientEstimationAttack):
    """NES gradient estimation driving PGD (Ilyas et al. 2018).

    The gradient of the margin at ``x`` is estimated with ``samples``
    antithetic pairs of Gaussian probes ``u_i ~ N(0, I)``::

        g = sum_i (L(x + sigma u_i) - L(x - sigma u_i)) u_i / (2 samples sigma)

    (probes clipped to the bounds) and followed by a projected
    steepest-descent step (see
    :class:`~gluon_robust.attacks.blackbox.GradientEstimationAttack`). The
    loss ``L`` is the margin of the scores, which works on logits and
    probabilities alike (the paper uses cross-entropy).

    Parameters
    ----------
    eps : float
        Radius of the threat model, in pixel units.
    norm : str
        ``"linf"`` (default) or ``"l2"``.
    max_queries : int
        Per-sample budget (default 10,000). One query for the clean input,
        then ``2 * samples + 1`` per step.
    samples : int
        Antithetic pairs per estimate (default 50).
    sigma : float
        Probe scale in pixel units (default 0.001, the paper's value).
    step_size : float, optional
        Descent step; default ``eps / 10``.
    seed : int
        Seed of the probes.

    Notes
    -----
    Shapes: ``x`` (N, C, H, W), ``y`` and ``target`` (N,). Each sample's
    probes are one query batch of ``2 * samples`` rows.

    Examples
    --------
    >>> attack = NES(eps=0.3, samples=50, max_queries=5000)
    >>> result = attack(model, x, y)
    >>> result.success.mean(), np.median(result.queries[result.success])
    """

    name = "nes"

    def __init__(self, *, eps: float, norm: str = "linf", max_queries: int = 10000, samples: int = 50,
                 sigma: float = 0.001, step_size: Optional[float] = None, seed: int = 0) -> None:
        eps = check_positive("eps", eps)
        super().__init__(eps=eps, norm=norm, max_queries=max_queries, step_size=eps / 10 if step_size is None else step_size,
                         seed=seed)
        self.samples = check_int("samples", samples)
        self.sigma = check_positive("sigma", sigma)
        self._estimate_cost = 2 * self.samples

    def _estimate(self, oracle: QueryCounter, points: np.ndarray, y: np.ndarray, target: Optional[np.ndarray],
                  rows: np.ndarray, rngs: Sequence[np.random.Generator], state: Dict[str, Any]) -> np.ndarray:
        low, high = oracle.bounds
        grads = np.empty(points.shape, np.float64)
        for j, row in enumerate(rows):
            u = rngs[j].standard_normal((self.samples,) + points.shape[1:])
            probes = np.clip(points[j] + self.sigma * np.concatenate([u, -u]), low, high).astype(np.float32)
            twice = np.full(2 * self.samples, j)
            scores = oracle.scores(probes, np.full(2 * self.samples, row))
            loss = margin(scores, y[twice], take(target, twice))
            diff = loss[: self.samples] - loss[self.samples :]
            grads[j] = np.tensordot(diff, u, axes=1) / (2 * self.samples * self.sigma)
        return grads

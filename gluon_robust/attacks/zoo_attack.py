"""ZOO: zeroth-order optimisation by coordinate-wise finite differences and coordinate ADAM.

Chen, Zhang, Sharma, Yi & Hsieh (2017), "ZOO: Zeroth Order Optimization
Based Black-box Attacks to Deep Neural Networks without Training Substitute
Models", AISec, https://arxiv.org/abs/1708.03999.

Distance: L-inf or L2 (fixed epsilon). Targeted and untargeted. Needs class scores.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import ConfigError
from ..validation import check_int, check_positive
from .blackbox import BlackBoxAttack, QueryCounter, is_adversarial, margin, take

__all__ = ["ZOO"]


class ZOO(BlackBoxAttack):
    """ZOO-ADAM (Chen et al. 2017) on the hinged margin inside an epsilon-ball.

    At each iteration a sample queries its current point and, for
    ``coordinates`` coordinates drawn at random without replacement, the two
    probes ``x +- h e_i``; the symmetric difference quotient
    ``(L(x + h e_i) - L(x - h e_i)) / 2h`` estimates each partial derivative
    of the loss ``L = max(margin, -confidence)`` (the C&W loss of the paper),
    and ADAM with per-coordinate moments and step counts updates exactly those
    coordinates, followed by the projection onto the eps-ball and the bounds.
    The query of the current point also tells whether it is adversarial:
    the sample then stops. ``1 + 2 * coordinates`` queries an iteration.

    The paper minimises ``||delta||_2^2 + c * L`` with a search over ``c``;
    here the threat model is a fixed ball and the projection replaces the
    distance term (the fixed-epsilon form of the attack). Its importance
    sampling and hierarchical attack, which only matter for large images,
    are left out.

    Parameters
    ----------
    eps : float
        Radius of the threat model, in pixel units.
    norm : str
        ``"linf"`` (default) or ``"l2"``.
    max_queries : int
        Per-sample budget (default 10,000).
    coordinates : int
        Coordinates estimated per iteration (default 128, the paper's batch);
        fewer when the budget runs short.
    h : float
        Finite-difference step in pixel units (default 1e-4, as in the paper).
    learning_rate : float
        ADAM step (default 0.1; the paper's 0.01 suits its unbounded
        objective, a fixed ball of MNIST size needs larger steps).
    beta1, beta2 : float
        ADAM moment decays in [0, 1) (defaults 0.9 and 0.999).
    confidence : float
        Hinge of the margin, ``kappa`` (default 0).
    seed : int
        Seed of the coordinate draws.

    Notes
    -----
    Shapes: ``x`` (N, C, H, W), ``y`` and ``target`` (N,). A probe the
    bounds (or, for L-inf, the ball) cut short uses its true step in the
    quotient. Each sample returns the queried point of lowest loss.

    Examples
    --------
    >>> attack = ZOO(eps=0.3, coordinates=128, max_queries=10000)
    >>> result = attack(model, x, y)
    >>> ZOO(eps=2.0, norm="l2")(model, x, y, target=t).success.mean()
    """

    name = "zoo"
    norms = ("linf", "l2")

    def __init__(self, *, eps: float, norm: str = "linf", max_queries: int = 10000, coordinates: int = 128,
                 h: float = 1e-4, learning_rate: float = 0.1, beta1: float = 0.9, beta2: float = 0.999,
                 confidence: float = 0.0, seed: int = 0) -> None:
        super().__init__(norm=norm, eps=check_positive("eps", eps), max_queries=max_queries, seed=seed)
        self.coordinates = check_int("coordinates", coordinates)
        self.h = check_positive("h", h)
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self.beta1 = check_positive("beta1", beta1, allow_zero=True)
        self.beta2 = check_positive("beta2", beta2, allow_zero=True)
        for name, value in (("beta1", self.beta1), ("beta2", self.beta2)):
            if value >= 1.0:
                raise ConfigError(f"{name} must be < 1, got {value!r}")
        self.confidence = check_positive("confidence", confidence, allow_zero=True)

    def _attack(self, oracle: QueryCounter, x: np.ndarray, y: np.ndarray, target: Optional[np.ndarray],
                rngs: Sequence[np.random.Generator]) -> np.ndarray:
        n, d = len(x), int(np.prod(x.shape[1:]))
        flat_x = x.reshape(n, d)
        current = flat_x.copy()
        best, best_loss = x.copy(), np.full(n, np.inf)
        moment, second = np.zeros((n, d)), np.zeros((n, d))
        updates = np.zeros((n, d), np.int64)
        active = np.ones(n, bool)
        while active.any():
            for i in np.flatnonzero(active):
                if oracle.remaining[i] < 1:
                    active[i] = False
                    continue
                k = min(self.coordinates, int(oracle.remaining[i] - 1) // 2, d)
                idx = rngs[i].choice(d, size=k, replace=False)
                plus, minus = self._probes(flat_x[i], current[i], idx, oracle.bounds)
                points = np.concatenate([current[i][None], plus, minus]).reshape((1 + 2 * k,) + x.shape[1:])
                same = np.full(1 + 2 * k, i)
                scores = oracle.scores(points, same)
                loss = np.maximum(margin(scores, y[same], take(target, same)), -self.confidence)
                hit = bool(is_adversarial(scores[0].argmax(), y[i], take(target, i)))
                if hit or loss[0] < best_loss[i]:
                    best[i], best_loss[i] = points[0], -np.inf if hit else loss[0]
                if hit or k == 0:
                    active[i] = False
                    continue
                step = plus[np.arange(k), idx] - minus[np.arange(k), idx]
                grad = np.divide(loss[1 : 1 + k] - loss[1 + k :], step, out=np.zeros(k), where=step > 0)
                current[i] = self._adam(i, idx, grad, current[i], moment, second, updates)
                delta = self.norm.project((current[i] - flat_x[i])[None], self.eps)[0]
                current[i] = np.clip(flat_x[i] + delta, *oracle.bounds).astype(np.float32)
        return best

    def _probes(self, x: np.ndarray, point: np.ndarray, idx: np.ndarray, bounds: tuple) -> tuple:
        """``point +- h e_i`` for each coordinate ``i`` of ``idx``, cut to the bounds (and, L-inf, the ball)."""
        low, high = self.norm.coordinate_bounds(x[idx], self.eps, *bounds)
        rows = np.arange(len(idx))
        plus = np.repeat(point[None], len(idx), axis=0)
        minus = plus.copy()
        plus[rows, idx] = np.minimum(point[idx] + self.h, high)
        minus[rows, idx] = np.maximum(point[idx] - self.h, low)
        return plus.astype(np.float32), minus.astype(np.float32)

    def _adam(
        self, i: int, idx: np.ndarray, grad: np.ndarray, point: np.ndarray,
        moment: np.ndarray, second: np.ndarray, updates: np.ndarray,
    ) -> np.ndarray:
        """One coordinate-ADAM step on the coordinates ``idx`` of sample ``i`` (moments updated in place)."""
        moment[i, idx] = self.beta1 * moment[i, idx] + (1 - self.beta1) * grad
        second[i, idx] = self.beta2 * second[i, idx] + (1 - self.beta2) * grad**2
        updates[i, idx] += 1
        t = updates[i, idx]
        m_hat = moment[i, idx] / (1 - self.beta1**t)
        v_hat = second[i, idx] / (1 - self.beta2**t)
        out = point.astype(np.float64)
        out[idx] -= self.learning_rate * m_hat / (np.sqrt(v_hat) + 1e-8)
        return out

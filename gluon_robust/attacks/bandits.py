"""Bandit optimisation with priors: gradient estimation with a time- and data-dependent prior.

Ilyas, Engstrom & Madry (2019), "Prior Convictions: Black-Box Adversarial
Attacks with Bandits and Priors", ICLR, https://arxiv.org/abs/1807.07978.

Distance: L-inf or L2 (fixed epsilon). Targeted and untargeted. Needs class scores.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..validation import check_int, check_positive
from .blackbox import GradientEstimationAttack, QueryCounter, margin, take
from .norms import L2Norm, get_norm

__all__ = ["Bandits"]

_TINY = 1e-12
_L2 = L2Norm()


def _tanh_step(prior: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The L-inf prior update: a step in the arctanh domain keeps the prior in (-1, 1)."""
    return np.tanh(np.arctanh(np.clip(prior, -1 + 1e-9, 1 - 1e-9)) + step)


def _plain_step(prior: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The L2 prior update: a plain gradient step."""
    return prior + step


class Bandits(GradientEstimationAttack):
    """Bandits-TD (Ilyas et al. 2019): a gradient prior refined by two queries a step.

    The attack keeps a prior ``v`` for the gradient on a coarse grid of
    ``tile_size x tile_size`` tiles (the *data* prior: neighbouring pixels
    have similar gradients) that carries over from step to step (the *time*
    prior). Each step draws an exploration ``u ~ N(0, I) * exploration / sqrt(dim)``
    on the grid, queries the loss at ``x + fd_eta * q / ||q||_2`` for
    ``q = up(v + u)`` and ``q = up(v - u)`` (``up`` repeats each tile over
    its pixels), and updates ``v`` with the finite-difference estimate
    ``(L_+ - L_-) / (fd_eta * exploration) * u``: an exponentiated-gradient
    step ``v <- tanh(atanh(v) + online_lr * g)`` on ``[-1, 1]`` for L-inf,
    a plain step ``v <- v + online_lr * g`` for L2. The image then follows
    ``up(v)`` with a projected steepest step (see
    :class:`~gluon_robust.attacks.blackbox.GradientEstimationAttack`), three
    queries a step in all. ``L`` is minus the margin of the scores (the
    paper uses cross-entropy).

    Parameters
    ----------
    eps : float
        Radius of the threat model, in pixel units.
    norm : str
        ``"linf"`` (default) or ``"l2"``.
    max_queries : int
        Per-sample budget (default 10,000): one for the clean input, three a step.
    tile_size : int, optional
        Side of a prior tile in pixels; default an eighth of the image side
        for L-inf and a thirty-second for L2 (at least 1): an L2 budget is
        best spent on few pixels, which a coarse prior cannot single out.
    exploration : float, optional
        Scale of the exploration; default 1.0 (L-inf) or 0.1 (L2).
    fd_eta : float, optional
        Finite-difference step in pixel units (default 0.1).
    online_lr : float, optional
        Learning rate of the prior; default 100 (L-inf) or 1.0 (L2).
    step_size : float, optional
        Image step; default ``eps / 10`` (L-inf) or ``eps / 5`` (L2).
    seed : int
        Seed of the explorations.

    Notes
    -----
    The defaults follow the paper's choices where they carry over (its
    L-inf exploration, step and prior rate) and were adapted for 28-32 px
    inputs otherwise. Shapes: ``x`` (N, C, H, W), ``y`` and ``target`` (N,).

    Examples
    --------
    >>> attack = Bandits(eps=0.3, max_queries=5000)
    >>> result = attack(model, x, y)
    >>> Bandits(eps=2.0, norm="l2", tile_size=4)(model, x, y).success.mean()
    """

    name = "bandits"

    def __init__(self, *, eps: float, norm: str = "linf", max_queries: int = 10000, tile_size: Optional[int] = None,
                 exploration: Optional[float] = None, fd_eta: Optional[float] = None,
                 online_lr: Optional[float] = None, step_size: Optional[float] = None, seed: int = 0) -> None:
        eps = check_positive("eps", eps)
        # The paper's defaults per norm: step, exploration, online learning rate.
        default_step, exploration_default, online_lr_default = get_norm(norm).choose(
            linf=(eps / 10, 1.0, 100.0), otherwise=(eps / 5, 0.1, 1.0)
        )
        super().__init__(eps=eps, norm=norm, max_queries=max_queries,
                         step_size=default_step if step_size is None else step_size, seed=seed)
        self.tile_size = None if tile_size is None else check_int("tile_size", tile_size)
        self.exploration = check_positive("exploration", exploration_default if exploration is None else exploration)
        self.fd_eta = check_positive("fd_eta", 0.1 if fd_eta is None else fd_eta)
        self.online_lr = check_positive("online_lr", online_lr_default if online_lr is None else online_lr)
        self._estimate_cost = 2

    def _grid(self, shape: Tuple[int, ...]) -> Tuple[int, Tuple[int, int, int]]:
        c, h, w = shape
        tile = self.tile_size or max(1, round(min(h, w) / self.norm.choose(linf=8, otherwise=32)))
        return tile, (c, -(-h // tile), -(-w // tile))

    def _up(self, prior: np.ndarray, tile: int, shape: Tuple[int, ...]) -> np.ndarray:
        """Repeat each tile of ``prior`` (M, C, h', w') over its pixels and crop to ``shape``."""
        full = prior.repeat(tile, axis=2).repeat(tile, axis=3)
        return full[:, :, : shape[1], : shape[2]]

    def _begin(self, x: np.ndarray, rngs: Sequence[np.random.Generator]) -> Dict[str, Any]:
        _, grid = self._grid(x.shape[1:])
        return {"prior": np.zeros((len(x),) + grid)}

    def _estimate(self, oracle: QueryCounter, points: np.ndarray, y: np.ndarray, target: Optional[np.ndarray],
                  rows: np.ndarray, rngs: Sequence[np.random.Generator], state: Dict[str, Any]) -> np.ndarray:
        low, high = oracle.bounds
        shape = points.shape[1:]
        tile, grid = self._grid(shape)
        prior = state["prior"][rows]
        u = np.stack([rng.standard_normal(grid) for rng in rngs]) * self.exploration / np.sqrt(np.prod(grid))
        probes = []
        for q in (self._up(prior + u, tile, shape), self._up(prior - u, tile, shape)):
            unit = q / (_L2.distance(q).reshape(-1, 1, 1, 1) + _TINY)
            probes.append(np.clip(points + self.fd_eta * unit, low, high).astype(np.float32))
        scores = oracle.scores(np.concatenate(probes), np.concatenate([rows, rows]))
        both = np.concatenate([np.arange(len(rows))] * 2)
        loss = -margin(scores, y[both], take(target, both))  # the loss to ascend
        m = len(rows)
        g = ((loss[:m] - loss[m:]) / (self.fd_eta * self.exploration)).reshape(-1, 1, 1, 1) * u
        prior = self.norm.choose(linf=_tanh_step, otherwise=_plain_step)(prior, self.online_lr * g)
        state["prior"][rows] = prior
        return -self._up(prior, tile, shape)  # the prior points uphill in the loss, downhill in the margin

"""The shared base of TRADES and MART: a weighted regulariser on an attack from a small Gaussian start.

Both methods (Zhang et al. 2019, https://arxiv.org/abs/1901.08573; Wang et
al. 2020, https://openreview.net/forum?id=rklOg6EFwS) take a weight ``beta``
and find their adversarial batch by projected steepest ascent from
``x + 0.001 * N(0, 1)``; they differ in the objective ascended and in the
training loss.
"""

from __future__ import annotations

import abc
from typing import Optional

from mxnet import gluon, nd

from ..validation import check_positive
from .adversarial import AdversarialMethod, Objective, bounds_of

__all__ = ["RegularisedMethod"]

#: Scale of the Gaussian start of the inner maximisation (both papers' code).
START_SCALE = 0.001


class RegularisedMethod(AdversarialMethod):
    """An adversarial method with a regulariser weight ``beta`` and a Gaussian-start inner maximisation.

    Parameters
    ----------
    eps, norm
        The threat model, as in :class:`~gluon_robust.training.adversarial.AdversarialMethod`.
    steps : int
        Steps of the inner maximisation (default 10).
    step_size : float, optional
        Absolute step; default ``2.5 * eps / steps``.
    beta : float
        Weight of the regulariser (default 6, both papers' choice).
    attack_bn, attack_updates_stats, seed
        See :class:`~gluon_robust.training.adversarial.AdversarialMethod`.
    """

    def __init__(self, *, eps: float, norm: str = "linf", steps: int = 10, step_size: Optional[float] = None,
                 beta: float = 6.0, attack_bn: str = "train", attack_updates_stats: bool = False,
                 seed: int = 0) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps, step_size=step_size, attack_bn=attack_bn,
                         attack_updates_stats=attack_updates_stats, seed=seed)
        self.beta = check_positive("beta", beta, allow_zero=True)

    @abc.abstractmethod
    def _objective(self, target: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> Objective:
        """The per-sample value the inner maximisation ascends (called inside the attack scope)."""

    def perturb(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        """The adversarial batch (detached): ascent of :meth:`_objective` from ``x + 0.001 * N(0, 1)``."""
        if self.eps == 0:
            return x.detach()
        start = self._gaussian_start(x, START_SCALE)
        with self._attack_scope(model, x) as target:
            return self._ascend(target, x, self._objective(target, x, y), start,
                                steps=self.steps, step_size=self.step_size, bounds=bounds_of(model))

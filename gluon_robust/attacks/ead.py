"""The EAD elastic-net attack.

Chen, Sharma, Zhang, Yi & Hsieh (2018), "EAD: Elastic-Net Attacks to Deep
Neural Networks via Adversarial Examples", AAAI,
https://arxiv.org/abs/1709.04114.

A minimal-perturbation attack that favours sparse perturbations: for each
sample it minimises the elastic-net objective

    c * max(-margin(x'), -kappa) + ||x' - x||_2^2 + beta * ||x' - x||_1

over the box ``model.bounds`` with FISTA (Beck & Teboulle 2009): gradient
steps on the smooth part, then the projected shrinkage-thresholding operator
for the L1 term and the box, then Nesterov momentum. The constant ``c`` is
binary-searched per sample as in Carlini & Wagner (2017). As in the paper's
iteration, the shrinkage threshold is ``beta`` itself rather than the
textbook ``step_size * beta``, so the pull towards sparsity strengthens as
the step size decays.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import nd

from ..errors import ConfigError
from ..validation import check_bool, check_int, check_positive
from .base import Attack, AttackKind, input_gradient
from .cw import ClampedMargin, ConstantSearch, EarlyAbort
from .losses import margin

__all__ = ["EAD", "shrink"]

#: Decision rules: which successful iterate counts as the best.
DECISION_RULES = ("en", "l1")


def _sum_per_sample(values: nd.NDArray) -> nd.NDArray:
    return nd.sum(values.reshape((values.shape[0], -1)), axis=1)


def shrink(z: nd.NDArray, x: nd.NDArray, beta: float, low: float, high: float) -> nd.NDArray:
    """The projected shrinkage-thresholding operator ``S_beta`` of EAD.

    Moves every coordinate of ``z`` towards ``x`` by ``beta`` (setting it to
    ``x`` when it is closer than ``beta``), then clips to ``[low, high]``: the
    proximal operator of ``beta * ||. - x||_1`` plus the box indicator.
    """
    delta = z - x
    return nd.clip(x + nd.sign(delta) * nd.relu(nd.abs(delta) - beta), low, high)


class EAD(Attack):
    """Elastic-net attack (Chen et al. 2018), minimal L1 perturbation.

    For a fixed ``c`` each search step runs ``steps`` FISTA iterations from
    the clean input: a gradient step on ``c * max(-margin, -kappa) +
    ||delta||_2^2`` at the momentum point, with a learning rate decaying as
    ``learning_rate * sqrt(1 - k / steps)``, then the shrinkage-thresholding
    projection ``S_beta`` (the threshold is ``beta`` itself, as in the paper's
    iteration). Per sample the best iterate that is adversarial with margin
    above ``kappa`` is kept across all search steps, "best" by the decision
    rule: the elastic-net distance ``||delta||_2^2 + beta * ||delta||_1``
    (``"en"``) or the L1 distance (``"l1"``). A sample never made adversarial
    is returned unchanged (the clean input), so its reported success is False
    and its distance 0.

    Distance: L1. Targeted and untargeted. Deterministic.

    Parameters
    ----------
    beta : float
        Weight of the L1 term and shrinkage threshold, in pixel units
        (default 1e-3). Larger values give sparser perturbations.
    binary_search_steps : int
        Search steps over ``c`` (default 9).
    steps : int
        FISTA iterations per search step (default 1000).
    learning_rate : float
        Initial step size of the gradient steps (default 0.01).
    initial_const : float
        Starting ``c`` (default 1e-2, as for :class:`~.cw.CarliniWagnerL2`).
    confidence : float
        ``kappa >= 0`` (default 0): the margin by which the adversarial class
        must win.
    decision_rule : str
        ``"en"`` (default) or ``"l1"``: how the best adversarial iterate is chosen.
    abort_early : bool
        Freeze a sample when its objective stalls (checked every
        ``steps // 10`` iterations), and end the search step once all are frozen.
    eot_samples : int
        Gradients averaged per iteration (Expectation over Transformation).
    seed : int
        Kept for the common interface; the attack is deterministic.

    Notes
    -----
    Shapes: ``x`` (N, C, H, W) in ``model.bounds``, ``y`` and ``target`` (N,).
    ``iterations`` counts each sample's FISTA iterations (frozen ones
    excluded); each costs ``eot_samples`` forward-backward passes at the
    momentum point plus one forward pass at the new iterate, which
    ``queries`` counts. The loop never synchronises the MXNet engine, except
    at the early abort checks (ten per search step, with ``abort_early``).

    Examples
    --------
    >>> attack = EAD(beta=1e-3, steps=1000, decision_rule="l1")
    >>> result = attack(model, x, y)                     # untargeted
    >>> result.norm, np.median(result.distance[result.success])
    ('l1', ...)
    >>> result = attack(model, x, y, target=t)           # targeted
    """

    name = "ead"
    norms = ("l1",)
    supports_targeted = True
    kind = AttackKind.MINIMUM_NORM

    def __init__(self, *, beta: float = 1e-3, binary_search_steps: int = 9, steps: int = 1000,
                 learning_rate: float = 0.01, initial_const: float = 1e-2, confidence: float = 0.0,
                 decision_rule: str = "en", abort_early: bool = True, eot_samples: int = 1, seed: int = 0) -> None:
        super().__init__(norm="l1", eps=None, seed=seed)
        self.beta = check_positive("beta", beta, allow_zero=True)
        self.binary_search_steps = check_int("binary_search_steps", binary_search_steps)
        self.steps = check_int("steps", steps)
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self.initial_const = check_positive("initial_const", initial_const)
        self.confidence = check_positive("confidence", confidence, allow_zero=True)
        rule = str(decision_rule).strip().lower() if isinstance(decision_rule, str) else decision_rule
        if rule not in DECISION_RULES:
            raise ConfigError(f"decision_rule must be one of {', '.join(DECISION_RULES)}, got {decision_rule!r}")
        self.decision_rule = rule
        self.abort_early = check_bool("abort_early", abort_early)
        self.eot_samples = check_int("eot_samples", eot_samples)

    def _queries(self, iterations: np.ndarray) -> np.ndarray:
        return iterations * (self.eot_samples + 1)

    def _run(self, model: mx.gluon.Block, x: nd.NDArray, y: nd.NDArray, target: Optional[nd.NDArray],
             rngs: Sequence[np.random.Generator]) -> Tuple[nd.NDArray, np.ndarray]:
        n, ctx = x.shape[0], x.context
        best_dist = nd.full((n,), np.inf, ctx=ctx)
        best_x = x.copy()
        iterations = ConstantSearch(n, self.initial_const, ctx).run(
            self.name, self.binary_search_steps,
            lambda const: self._descend(model, x, y, target, const, best_dist, best_x),
        )
        return best_x, iterations

    def _descend(
        self,
        model: mx.gluon.Block,
        x: nd.NDArray,
        y: nd.NDArray,
        target: Optional[nd.NDArray],
        const: nd.NDArray,
        best_dist: nd.NDArray,
        best_x: nd.NDArray,
    ) -> Tuple[nd.NDArray, nd.NDArray]:
        """One search step: FISTA from the clean input at fixed ``c``.

        Updates ``best_dist`` and ``best_x`` in place; returns which samples
        succeeded during the step and how many iterations each took.
        """
        low, high = model.bounds
        n, ctx = x.shape[0], x.context
        loss = ClampedMargin(self.confidence, scale=const)
        current, slack = x.copy(), x.copy()
        succeeded = nd.zeros((n,), ctx=ctx)
        steps_taken = nd.zeros((n,), ctx=ctx)
        abort = EarlyAbort(n, self.steps, self.abort_early, ctx)
        for k in range(self.steps):
            rate = self.learning_rate * np.sqrt(1 - k / self.steps)
            # grad of c * min(margin, kappa): the smooth objective descends 2 * delta minus it.
            grad_x, _, _ = input_gradient(model, slack, y, target, loss, self.eot_samples)
            proposal = shrink(slack - rate * (2 * (slack - x) - grad_x), x, self.beta, low, high)
            active = abort.active
            slack = nd.where(active, proposal + (k / (k + 3)) * (proposal - current), slack)
            current = nd.where(active, proposal, current)
            steps_taken = steps_taken + active

            delta = current - x
            l1 = _sum_per_sample(nd.abs(delta))
            elastic = _sum_per_sample(delta * delta) + self.beta * l1
            adv_margin = margin(model(current), y, target)
            adversarial = adv_margin > self.confidence
            dist = l1 if self.decision_rule == "l1" else elastic
            improved = adversarial * (dist < best_dist)
            best_dist[:] = nd.where(improved, dist, best_dist)
            best_x[:] = nd.where(improved, current, best_x)
            succeeded = nd.maximum(succeeded, adversarial)
            objective = elastic - const * nd.minimum(adv_margin, self.confidence)
            if abort.check(k + 1, objective):
                break
        return succeeded, steps_taken

"""APGD-T: Auto-PGD on the targeted DLR loss, cycling over likely target classes.

Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML,
https://arxiv.org/abs/2003.01690.

Targeting the runner-up classes one after another gives the attack several
differently shaped objectives; success is still plain misclassification, so
the attack is untargeted from the caller's point of view. Distance: L-inf or L2.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, nd

from ..validation import check_int
from .apgd import APGD, TraceFn
from .losses import LossFn

__all__ = ["APGDT"]


class APGDT(APGD):
    """Targeted APGD over the top-scoring wrong classes (Croce & Hein 2020).

    For ``j = 1 .. n_target_classes`` the attack runs :class:`APGD` with a
    targeted loss (targeted DLR by default) towards the ``j``-th highest
    scoring class other than the true one, on the clean logits; each target
    gets ``restarts`` runs (targets outer, restarts inner, as in the
    reference implementation, which ranks the classes of the samples still
    to fool by their clean logits: for a correctly classified sample its
    ``j + 1``-th highest class is our ``j``-th). A run counts as a success when the sample is
    misclassified (whatever the predicted class), and later runs skip the
    samples already fooled, so per sample the first success is kept; samples
    never fooled return their point of highest loss.

    Parameters
    ----------
    eps : float
        Radius of the threat model, in pixel units.
    norm : str
        ``"linf"`` (default) or ``"l2"``.
    steps : int
        Iterations per run (default 100).
    n_target_classes : int
        Number of target classes tried (default 9), capped at
        ``num_classes - 1``.
    restarts : int
        Runs per target class (default 1).
    loss : str or callable
        ``"dlr"`` (default, the targeted DLR loss, which needs at least four
        classes), ``"ce"`` or ``"margin"``, used in their targeted form.
    rho, alpha, random_start, eot_samples, seed, trace
        As in :class:`APGD`; run ``j * restarts + r`` of the trace is restart
        ``r`` on target ``j``.

    Notes
    -----
    No targeted mode: the attack chooses its targets itself. Shapes: ``x`` is
    (N, C, H, W), ``y`` (N,). ``iterations`` counts gradient steps per sample
    over all the runs it took part in.

    Examples
    --------
    >>> attack = APGDT(eps=8 / 255, n_target_classes=3)
    >>> result = attack(model, x, y)
    >>> result.success.mean(), result.iterations
    """

    name = "apgd-t"
    supports_targeted = False

    def __init__(self, *, eps: float, norm: str = "linf", steps: int = 100, n_target_classes: int = 9,
                 restarts: int = 1, loss: str | LossFn = "dlr", rho: float = 0.75, alpha: float = 0.75,
                 random_start: bool = True, eot_samples: int = 1, seed: int = 0,
                 trace: Optional[TraceFn] = None) -> None:
        super().__init__(
            eps=eps, norm=norm, steps=steps, restarts=restarts, loss=loss, rho=rho, alpha=alpha,
            random_start=random_start, eot_samples=eot_samples, seed=seed, trace=trace,
        )
        self.n_target_classes = check_int("n_target_classes", n_target_classes)

    def _run(self, model: mx.gluon.Block, x: nd.NDArray, y: nd.NDArray, target: Optional[nd.NDArray],
             rngs: Sequence[np.random.Generator]) -> Tuple[nd.NDArray, np.ndarray]:
        with autograd.pause(train_mode=False):
            logits = model(x)
        count = min(self.n_target_classes, logits.shape[1] - 1)
        others = nd.where(nd.one_hot(y, logits.shape[1]), nd.full(logits.shape, -np.inf, ctx=x.context), logits)
        ranked = nd.topk(others, axis=1, k=count, ret_typ="indices")  # (N, count), best first
        aims = [ranked[:, j] for j in range(count) for _ in range(self.restarts)]
        return self._run_all(model, x, y, aims, False, rngs)

    def _queries(self, iterations: np.ndarray) -> np.ndarray:
        # Plus the clean forward pass that ranks the target classes.
        return super()._queries(iterations) + 1

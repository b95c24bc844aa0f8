"""The Jacobian-based Saliency Map Attack (JSMA).

Papernot, McDaniel, Jha, Fredrikson, Celik & Swami (2016), "The Limitations of
Deep Learning in Adversarial Settings", IEEE EuroS&P,
https://arxiv.org/abs/1511.07528.

Distance: L0 (the number of changed input features; minimal perturbation, no
epsilon). Targeted; without a target, each sample gets a random one.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, nd

from ..errors import ConfigError
from ..validation import check_positive
from .base import Attack, AttackKind, gradient_recording

__all__ = ["JSMA"]

logger = logging.getLogger(__name__)

# Elements of one (N, rows, D) block of the pair search; bounds its memory
# (each temporary of a block is at most 64 MiB in float32).
_PAIR_BLOCK_ELEMENTS = 1 << 24
# Added to the target gradient of features that may not change: any pair
# holding one has a negative target gain and so no saliency.
_EXCLUDED = 1e30


def _check_theta(value: Any) -> float:
    is_number = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not is_number or not np.isfinite(value):
        raise ConfigError(f"theta must be a finite number, got {value!r}")
    if value == 0 or abs(value) > 1:
        raise ConfigError(f"theta must be in [-1, 0) or (0, 1] (a fraction of the bounds range), got {value!r}")
    return float(value)


def _pair_sums(v: nd.NDArray, start: int, stop: int) -> nd.NDArray:
    """``v[:, p] + v[:, q]`` for ``start <= p < stop`` and ``q >= start``: (N, stop - start, D - start)."""
    return nd.broadcast_add(v[:, start:stop].expand_dims(2), v[:, start:].expand_dims(1))


class JSMA(Attack):
    """Targeted L0 attack that changes the two most salient features per iteration (Papernot et al. 2016).

    Every iteration takes two input gradients at the current point: of the
    target's score, ``a = dZ_t/dx``, and of the other classes' summed scores,
    ``b = sum_{j != t} dZ_j/dx``. For a pair of features ``(p, q)`` let
    ``A = a_p + a_q`` and ``B = b_p + b_q``. Among the pairs where moving both
    features in the attack's direction helps the target (``A > 0``) and hurts
    the others (``B < 0``), the pair maximising ``A * |B|`` is chosen (for
    ``theta < 0`` the signs of ``a`` and ``b`` are flipped first). Both features
    move by ``theta * (high - low)``, clipped to the bounds. Features that are
    saturated (at the upper bound when increasing, the lower bound when
    decreasing) leave the search set. The budget ``floor(gamma * num_features)``
    of changed features holds exactly: once fewer than two changes are left,
    only features changed already stay in the search set (so an odd budget
    may leave one change unused).

    The paper does not say what happens when no pair meets the sign
    conditions; this implementation then takes the pair with the largest
    first-order gain of the target margin, ``A - B``, so that the attack does
    not stop early.

    Parameters
    ----------
    theta : float
        Change of a selected feature, as a fraction of the bounds range:
        ``1.0`` (default) sets it to the upper bound, ``0.5`` moves it half the
        range up, negative values move it down (``-1.0``: to the lower bound).
    gamma : float
        Maximum fraction of the input features (every ``C * H * W`` value)
        changed, in (0, 1] (default 0.1). This is the L0 budget; there is no
        ``eps``.
    use_logits : bool
        Saliency on the logits (default, "JSMA-Z") or on the softmax
        probabilities ("JSMA-F", the paper's choice). With probabilities
        ``b = -a`` exactly, so the pair score reduces to ``A ** 2`` over the
        pairs with ``A > 0``.
    norm : str
        Only ``"l0"``.
    seed : int
        Seed of the random targets of an untargeted call.

    Notes
    -----
    Shapes: ``x`` is (N, C, H, W) inside ``model.bounds``; ``y`` and ``target``
    are (N,). Targeted calls stop a sample once it is classified as its
    target. Untargeted calls draw, for each sample, a target uniformly among
    the other classes from that sample's generator (so a sample gets the same
    target alone or in any batch), run the targeted search towards it, and
    stop a sample as soon as it is misclassified (any class but ``y``).

    The pair search is vectorised over the batch and over all pairs, in
    blocks of rows of bounded memory, but it costs ``O(D ** 2)`` work per
    sample and iteration (``D`` features): practical for MNIST- and
    CIFAR-sized inputs, not for ImageNet-sized ones.

    The attack is sequential: after each iteration's forward pass, one
    synchronisation (``asscalar``) checks whether any sample is still
    running, and the loop stops when none is. ``iterations`` counts the pair
    updates of each sample; ``queries`` counts input gradients (two per
    iteration).

    Examples
    --------
    >>> attack = JSMA(theta=1.0, gamma=0.1)
    >>> result = attack(model, x, y, target=t)           # targeted
    >>> result.success.mean(), result.distance            # distance: changed features
    >>> result = JSMA(theta=-1.0)(model, x, y)           # untargeted, random targets
    """

    name = "jsma"
    norms = ("l0",)
    supports_targeted = True
    kind = AttackKind.MINIMUM_NORM

    def __init__(self, *, theta: float = 1.0, gamma: float = 0.1, use_logits: bool = True, norm: str = "l0",
                 seed: int = 0) -> None:
        super().__init__(norm=norm, eps=None, seed=seed)
        self.theta = _check_theta(theta)
        self.gamma = check_positive("gamma", gamma, upper=1.0)
        if not isinstance(use_logits, (bool, np.bool_)):
            raise ConfigError(f"use_logits must be True or False, got {use_logits!r}")
        self.use_logits = bool(use_logits)

    def _queries(self, iterations: np.ndarray) -> np.ndarray:
        return 2 * iterations

    # ------------------------------------------------------------------ loop
    def _run(self, model: mx.gluon.Block, x: nd.NDArray, y: nd.NDArray, target: Optional[nd.NDArray],
             rngs: Sequence[np.random.Generator]) -> Tuple[nd.NDArray, np.ndarray]:
        low, high = model.bounds
        n, shape = x.shape[0], x.shape
        features = int(np.prod(shape[1:]))
        budget = int(math.floor(self.gamma * features + 1e-9))
        if budget < 2:
            raise ConfigError(
                f"gamma={self.gamma} allows {budget} changed feature(s) of {features}; "
                "JSMA changes features in pairs, so gamma * features must be at least 2"
            )
        untargeted = target is None
        if untargeted:
            target = self._random_targets(y, model.num_classes, rngs)
        increase = self.theta > 0
        sign = 1.0 if increase else -1.0  # flips the gradients so that "helps" always means > 0
        delta = self.theta * (high - low)
        # Each feature moves at most ceil(1 / |theta|) times before it saturates,
        # at most `budget` features move, and every iteration moves two.
        max_iterations = math.ceil(budget * math.ceil(1.0 / abs(self.theta)) / 2)

        x0 = x.reshape((n, features))
        x_cur = x0
        alive = nd.ones((n,), ctx=x.context)  # cleared when a sample has no eligible pair left
        moved = nd.zeros((n,), ctx=x.context)
        iteration = 0
        for iteration in range(max_iterations):
            target_grad, other_grad, logits = self._gradients(model, x_cur.reshape(shape), target)
            pred = logits.argmax(axis=1)
            done = pred != y if untargeted else pred == target
            active = alive * (1 - done)
            # One synchronisation per iteration: stop when no sample is still running.
            if active.sum().asscalar() == 0:
                break
            saturated = x_cur >= high if increase else x_cur <= low
            changed = x_cur != x0
            # With fewer than two changes left, only features changed already may move.
            full = (budget - nd.sum(changed, axis=1) < 2).reshape((-1, 1))
            searchable = (1 - saturated) * (1 - nd.broadcast_mul(full, 1 - changed))
            p, q, found = self._best_pairs(sign * target_grad, sign * other_grad, searchable)
            step = delta * (nd.one_hot(p, features) + nd.one_hot(q, features))
            update = active * found
            x_cur = nd.where(update.reshape((-1, 1)).broadcast_like(x_cur), nd.clip(x_cur + step, low, high), x_cur)
            alive = alive * found
            moved = moved + update
        logger.debug("jsma: stopped at iteration %d of at most %d (budget %d features)", iteration, max_iterations, budget)
        return x_cur.reshape(shape), moved.asnumpy().astype(np.int64)

    @staticmethod
    def _random_targets(y: nd.NDArray, num_classes: int, rngs: Sequence[np.random.Generator]) -> nd.NDArray:
        """A target per sample, uniform over the classes other than its label, from its own generator."""
        labels = y.asnumpy().astype(np.int64)
        shifts = np.array([1 + rng.integers(num_classes - 1) for rng in rngs], dtype=np.int64)
        return nd.array((labels + shifts) % num_classes, ctx=y.context, dtype="float32")

    def _gradients(
        self, model: mx.gluon.Block, x: nd.NDArray, target: nd.NDArray
    ) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
        """Gradients (N, D) of the target score and of the other classes' summed scores, and the logits.

        One forward pass is recorded and differentiated twice, with respect
        to the input only.
        """
        n = x.shape[0]
        xv = x.copy()
        xv.attach_grad()
        with gradient_recording(model):
            logits = model(xv)
            scores = logits if self.use_logits else nd.softmax(logits, axis=1)
            target_score = nd.pick(scores, target, axis=1)
            other_score = nd.sum(scores, axis=1) - target_score
        (target_grad,) = autograd.grad(target_score, [xv], retain_graph=True)
        (other_grad,) = autograd.grad(other_score, [xv], retain_graph=False)
        return target_grad.reshape((n, -1)), other_grad.reshape((n, -1)), logits.detach()

    @staticmethod
    def _best_pairs(a: nd.NDArray, b: nd.NDArray, searchable: nd.NDArray) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
        """The most salient pair ``p != q`` of searchable features of every sample.

        The saliency of a pair is ``A * |B|`` over the pairs with ``A > 0`` and
        ``B < 0``, where ``A = a_p + a_q`` and ``B = b_p + b_q``.
        Unsearchable features get ``a = -1e30``, so every pair holding one has
        ``A < 0``; the pair search therefore needs no masks, and it visits each
        unordered pair once (strict upper triangle, in blocks of rows). Where no
        pair has a positive saliency, the pair with the largest ``A - B`` is
        taken; that score is a sum over the two features, so it is the top two
        features by ``a - b``.

        Parameters
        ----------
        a, b : NDArray (N, D)
            Direction-signed gradients of the target score and of the others.
        searchable : NDArray (N, D)
            1 where a feature may be changed.

        Returns
        -------
        p, q : NDArray (N,)
            Feature indices (float32).
        found : NDArray (N,)
            1 where at least two features are searchable.
        """
        n, d = a.shape
        ctx = a.context
        a_masked = nd.where(searchable, a, nd.full(a.shape, -_EXCLUDED, ctx=ctx))
        minus_b = -b
        rows = max(1, min(d, _PAIR_BLOCK_ELEMENTS // (n * d)))
        block_best, block_arg = [], []
        for start in range(0, d, rows):
            stop = min(d, start + rows)
            # Block of pairs (p, q) with start <= p < stop and q >= start; keep q > p.
            row = nd.arange(start, stop, ctx=ctx).reshape((1, -1, 1))
            col = nd.arange(start, d, ctx=ctx).reshape((1, 1, -1))
            lower = nd.broadcast_lesser_equal(col, row) * -_EXCLUDED
            alpha = nd.broadcast_add(_pair_sums(a_masked, start, stop), lower)
            # relu(A) * -B: positive exactly on the salient pairs, where it is A * |B|.
            saliency = nd.relu(alpha) * _pair_sums(minus_b, start, stop)
            arg = saliency.argmax(axis=2)
            block_best.append(nd.pick(saliency, arg, axis=2))
            block_arg.append(arg + start)
        best, arg = nd.concat(*block_best, dim=1), nd.concat(*block_arg, dim=1)
        p = best.argmax(axis=1)
        q = nd.pick(arg, p, axis=1)
        salient = nd.pick(best, p, axis=1) > 0
        # Fallback: the two searchable features with the largest a - b.
        gain = nd.where(searchable, a - b, nd.full(a.shape, -np.inf, ctx=ctx))
        top_values, top_features = nd.topk(gain, axis=1, k=2, ret_typ="both")
        found = top_values[:, 1] > -np.inf
        p = nd.where(salient, p, top_features[:, 0])
        q = nd.where(salient, q, top_features[:, 1])
        return p, q, found

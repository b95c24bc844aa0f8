"""Transfer attack: craft on surrogate models, evaluate on the black-box target.

Momentum: Dong, Liao, Pang, Su, Zhu, Hu & Li (2018), "Boosting Adversarial
Attacks with Momentum", CVPR, https://arxiv.org/abs/1710.06081 (MI-FGSM, and
the ensemble of models with averaged logits).
Input diversity: Xie, Zhang, Zhou, Bai, Wang, Ren & Yuille (2019), "Improving
Transferability of Adversarial Examples with Input Diversity", CVPR,
https://arxiv.org/abs/1803.06978 (DI-FGSM).

Distance: L-inf or L2 (fixed epsilon). Targeted and untargeted. The target is
queried once per sample, to evaluate the crafted point.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Union

import mxnet as mx
import numpy as np
from mxnet import nd

from ..errors import ConfigError
from ..validation import check_int, check_positive
from .base import input_gradient
from .blackbox import BlackBoxAttack, QueryCounter
from .losses import LossFn, get_loss

__all__ = ["TransferAttack", "diverse_inputs"]

_TINY = 1e-12
SurrogateSource = Union[str, "os.PathLike[str]", mx.gluon.HybridBlock]


def diverse_inputs(
    x: nd.NDArray, rngs: Sequence[np.random.Generator], prob: float, resize_rate: float
) -> nd.NDArray:
    """The DI transform: with probability ``prob`` per sample, a random resize and a random pad.

    A transformed sample is resized from the canvas side ``S = ceil(H * resize_rate)``
    down to a random side ``H <= rnd < S``, placed at a random pixel offset on an
    ``S x S`` canvas of zeros and the canvas resized back to the input size, so the
    model sees its own input size (the paper feeds the canvas to a network that
    accepts any size). All of it is one affine map per sample
    (:func:`mxnet.nd.GridGenerator` + :func:`mxnet.nd.BilinearSampler`), so the
    input gradient flows through it; the other samples get the identity. The draws
    come from each sample's generator. Non-square inputs use the same fractions on
    both axes.
    """
    n, _, h, _ = x.shape
    canvas = int(np.ceil(h * resize_rate))
    theta = np.tile(np.array([1, 0, 0, 0, 1, 0], np.float32), (n, 1))
    for i, rng in enumerate(rngs):
        if canvas <= h or rng.random() >= prob:
            continue
        side = int(rng.integers(h, canvas))
        scale = side / canvas  # the part of the canvas the image covers, per axis
        top, left = (int(v) / canvas for v in rng.integers(0, canvas - side + 1, size=2))
        # Output coordinates u in [-1, 1] read the input at (u - centre) / scale.
        centre_h, centre_w = -1 + 2 * top + scale, -1 + 2 * left + scale
        theta[i] = [1 / scale, 0, -centre_w / scale, 0, 1 / scale, -centre_h / scale]
    grid = nd.GridGenerator(nd.array(theta, ctx=x.context), transform_type="affine", target_shape=x.shape[2:])
    return nd.BilinearSampler(x, grid)


class _Surrogate:
    """The crafting model: input diversity, then the logits averaged over the surrogates."""

    def __init__(self, models: List[mx.gluon.HybridBlock], rngs: Sequence[np.random.Generator], prob: float,
                 resize_rate: float) -> None:
        self.models = models
        self.rngs = rngs
        self.prob = prob
        self.resize_rate = resize_rate
        self.mode_free = all(getattr(m, "mode_free", False) for m in models)

    def __call__(self, x: nd.NDArray) -> nd.NDArray:
        if self.prob > 0:
            x = diverse_inputs(x, self.rngs, self.prob, self.resize_rate)
        logits = [m(x.as_in_context(getattr(m, "ctx", x.context))).as_in_context(x.context) for m in self.models]
        return nd.add_n(*logits) / len(logits) if len(logits) > 1 else logits[0]


class TransferAttack(BlackBoxAttack):
    """MI-DI-FGSM on a surrogate (or an ensemble), evaluated on the target (Dong et al. 2018; Xie et al. 2019).

    The adversarial examples are crafted with white-box gradients of the
    *surrogates* only: ``steps`` iterations of ::

        g <- decay * g + grad / mean(|grad|)
        x <- P(x + step_size * d(g))

    where ``grad`` is the input gradient of the loss of the surrogates'
    averaged logits at the DI-transformed input (:func:`diverse_inputs`),
    ``d`` the steepest direction of the norm (the sign for L-inf) and ``P``
    the projection onto the eps-ball and the bounds. The target never gives a
    gradient; it is queried once per sample, on the final point, and
    ``result.success_rate`` is the transfer success rate.

    Parameters
    ----------
    surrogate : Classifier, str or sequence of them
        One surrogate or several (an ensemble, logits averaged). A string
        is loaded with :func:`~gluon_robust.model.load_classifier` (a config
        YAML, a bundled config name or a zoo name).
    eps : float
        Radius of the threat model, in pixel units.
    norm : str
        ``"linf"`` (default) or ``"l2"``.
    steps : int
        Iterations on the surrogate (default 10).
    step_size : float, optional
        Default ``eps / steps``.
    decay : float
        Momentum ``mu`` (default 1.0; 0 removes the momentum).
    diversity_prob : float
        Probability of the DI transform per sample and step, in [0, 1]
        (default 0.5, the paper's; 0 removes it).
    resize_rate : float
        Canvas size over image size for DI, >= 1 (default 1.1, the paper's
        299 -> 330).
    loss : str or callable
        ``"ce"`` (default), ``"margin"`` or ``"dlr"`` on the surrogate logits.
    seed : int
        Seed of the DI draws.

    Notes
    -----
    Shapes: ``x`` (N, C, H, W) inside the target's bounds, ``y`` and
    ``target`` (N,). ``queries`` is 1 for every sample.

    Examples
    --------
    >>> attack = TransferAttack(surrogate=[model_a, model_b], eps=0.3, steps=20)
    >>> result = attack(black_box_target, x, y)
    >>> result.success_rate                               # transfer success rate
    >>> TransferAttack(surrogate="mnist_resnet20", eps=0.3, diversity_prob=0.0)(endpoint, x, y)
    """

    name = "transfer"
    norms = ("linf", "l2")

    def __init__(self, *, surrogate: Union[SurrogateSource, Sequence[SurrogateSource]], eps: float,
                 norm: str = "linf", steps: int = 10, step_size: Optional[float] = None, decay: float = 1.0,
                 diversity_prob: float = 0.5, resize_rate: float = 1.1, loss: Union[str, LossFn] = "ce",
                 seed: int = 0) -> None:
        super().__init__(norm=norm, eps=check_positive("eps", eps), max_queries=1, seed=seed)
        self.surrogate = _load_surrogates(surrogate)
        self.steps = check_int("steps", steps)
        self.step_size = self.eps / self.steps if step_size is None else check_positive("step_size", step_size)
        self.decay = check_positive("decay", decay, allow_zero=True)
        self.diversity_prob = check_positive("diversity_prob", diversity_prob, allow_zero=True, upper=1.0)
        self.resize_rate = check_positive("resize_rate", resize_rate)
        if self.resize_rate < 1.0:
            raise ConfigError(f"resize_rate must be >= 1, got {resize_rate!r}")
        self.loss = get_loss(loss)

    def __repr__(self) -> str:
        params = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        params["surrogate"] = [getattr(m, "arch", type(m).__name__) for m in self.surrogate]  # not whole networks
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in sorted(params.items()))})"

    def _attack(self, oracle: QueryCounter, x: np.ndarray, y: np.ndarray, target: Optional[np.ndarray],
                rngs: Sequence[np.random.Generator]) -> np.ndarray:
        low, high = oracle.bounds
        ctx = getattr(self.surrogate[0], "ctx", mx.cpu())
        model = _Surrogate(self.surrogate, rngs, self.diversity_prob, self.resize_rate)
        x_nd = nd.array(x, ctx=ctx)
        y_nd = nd.array(y, ctx=ctx, dtype="float32")
        t_nd = None if target is None else nd.array(target, ctx=ctx, dtype="float32")
        delta = nd.zeros_like(x_nd)
        momentum = nd.zeros_like(x_nd)
        for _ in range(self.steps):
            grad, _, _ = input_gradient(model, x_nd + delta, y_nd, t_nd, self.loss)
            scale = nd.mean(nd.abs(grad.reshape((grad.shape[0], -1))), axis=1).reshape((-1, 1, 1, 1)) + _TINY
            momentum = self.decay * momentum + grad / scale
            delta = self.norm.project(delta + self.step_size * self.norm.direction(momentum), self.eps)
            delta = nd.clip(x_nd + delta, low, high) - x_nd
        x_adv = (x_nd + delta).asnumpy()
        oracle.labels(x_adv, np.arange(len(x)))  # the one evaluation on the target
        return x_adv


def _load_surrogates(source: Any) -> List[mx.gluon.HybridBlock]:
    """The surrogate models: blocks as given, strings loaded as classifiers."""
    from ..model import load_classifier

    items = list(source) if isinstance(source, (list, tuple)) else [source]
    if not items:
        raise ConfigError("surrogate must name at least one model, got an empty list")
    models = []
    for item in items:
        if isinstance(item, mx.gluon.Block):
            models.append(item)
        elif isinstance(item, (str, os.PathLike)):
            models.extend(load_classifier(str(part).strip()) for part in str(item).split(",") if part.strip())
        else:
            raise ConfigError(f"surrogate must be a model, a model name or a list of them, got {type(item).__name__}")
    return models

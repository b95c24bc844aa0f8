"""The evasion objective of the adaptive detector attacks, and the projected ascent on it.

Carlini & Wagner (2017), https://arxiv.org/abs/1705.07263 (the weighted
objective); Bryniarski, Hingun, Pachuca, Wang & Carlini (2021), "Evading
Adversarial Example Detection Defenses with Orthogonal Projected Gradient
Descent", https://arxiv.org/abs/2106.15023 (the selective objective). The
ascent is :func:`gluon_robust.attacks.engine.ascend` with a fixed step and a
per-step best-point bookkeeping.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from mxnet import autograd, nd

from ..attacks.base import gradient_recording
from ..attacks.engine import BestPoint, FixedStep, ascend
from ..attacks.norms import Norm
from ..errors import ConfigError
from .base import Detector
from .combined import NEG as _NEG

__all__ = ["evasion_objective", "evasion_pgd"]


_OBJECTIVES = ("selective", "weighted")
_SUCCESS_BONUS = 1e6  # puts every misclassified-and-unflagged iterate above every other one


def _class_margin(logits: nd.NDArray, labels: nd.NDArray) -> nd.NDArray:
    """``z_y - max_{j != y} z_j``: negative exactly when the input is misclassified."""
    neg = nd.full(logits.shape, _NEG, ctx=logits.context)
    others = nd.where(nd.one_hot(labels, logits.shape[1]), neg, logits)
    return nd.pick(logits, labels, axis=1) - nd.max(others, axis=1)


def evasion_objective(
    logits: nd.NDArray,
    scores: nd.NDArray,
    labels: nd.NDArray,
    *,
    threshold: float,
    scale: float,
    objective: str = "selective",
    c: float = 1.0,
    confidence: float = 0.0,
    score_margin: float = 0.0,
) -> Tuple[nd.NDArray, nd.NDArray]:
    """The per-sample value an adaptive attack ascends, and the key by which it ranks iterates.

    With the classification margin ``m = z_y - max_{j != y} z_j`` and the
    normalised detector score ``d = (s - threshold) / scale`` (the input is
    flagged when ``d > 0``):

    * ``"weighted"`` (C&W 2017): ascend ``-(max(m, -confidence) + c * relu(d + score_margin))``;
    * ``"selective"`` (Bryniarski et al. 2021): ascend ``-m`` while
      ``m > -confidence`` (not yet misclassified with that margin), else ``-d``.
      Scale free: each sample follows one term's gradient at a time.

    Parameters
    ----------
    logits : NDArray
        Classifier logits ``(N, K)``.
    scores : NDArray
        Detector scores ``(N,)``.
    labels : NDArray
        True labels ``(N,)`` (float32).
    threshold, scale : float
        The detector's threshold and clean score spread.
    objective : str
        ``"selective"`` or ``"weighted"``.
    c : float
        Weight of the detector term (``"weighted"`` only).
    confidence : float
        Logit margin by which to misclassify.
    score_margin : float
        How far below the threshold, in units of ``scale``, the weighted term pushes the score.

    Returns
    -------
    value, key : NDArray
        ``value`` ``(N,)`` to ascend; ``key`` ``(N,)`` ranks iterates: above
        ``1e5`` exactly when misclassified and unflagged (then larger means
        more slack on both), otherwise ``-(relu(m) + relu(d))``.
    """
    margin = _class_margin(logits, labels)
    d = (scores - threshold) / scale
    if objective == "weighted":
        value = -(nd.maximum(margin, -confidence) + c * nd.relu(d + score_margin))
    elif objective == "selective":
        value = nd.where(margin > -confidence, -margin, -d)
    else:
        raise ConfigError(f"objective must be one of {', '.join(_OBJECTIVES)}; got {objective!r}")
    success = (margin < 0) * (d <= 0)
    key = nd.where(success, _SUCCESS_BONUS + nd.minimum(-margin, -d), -(nd.relu(margin) + nd.relu(d)))
    return value, key


def evasion_pgd(
    model: Any,
    detector: Detector,
    x: nd.NDArray,
    y: nd.NDArray,
    delta: nd.NDArray,
    *,
    norm: Norm,
    eps: float,
    steps: int,
    step_size: float,
    objective: Dict[str, Any],
) -> nd.NDArray:
    """PGD on :func:`evasion_objective` from ``x + delta``; per sample the best iterate over all steps.

    The detector's threshold and scale come from ``detector``; ``objective``
    holds the other keywords of :func:`evasion_objective`. Gradients are taken
    with respect to the input only, under :func:`gradient_recording`; the
    last iterate is ranked too.
    """
    threshold, scale = float(detector.threshold), float(detector.clean_scale or 1.0)
    best: Optional[BestPoint] = None

    def gradient(point: nd.NDArray) -> Tuple[nd.NDArray, Tuple[nd.NDArray, nd.NDArray]]:
        point.attach_grad()
        with gradient_recording(model):
            logits = model(point)
            scores = detector.score_nd(model, point, logits=logits)
            value, _ = evasion_objective(logits, scores, y, threshold=threshold, scale=scale, **objective)
        (grad,) = autograd.grad(value, [point], retain_graph=False)
        return grad, (logits.detach(), scores.detach())

    def observe(point: nd.NDArray, aux: Optional[Tuple[nd.NDArray, nd.NDArray]]) -> None:
        nonlocal best
        if best is None:
            best = BestPoint(point)
        if aux is None:  # the last iterate: no gradient was taken there
            with autograd.pause(train_mode=False):
                logits = model(point)
                aux = (logits, detector.score_nd(model, point, logits=logits))
        with autograd.pause():
            _, key = evasion_objective(aux[0], aux[1], y, threshold=threshold, scale=scale, **objective)
            best.offer(point.detach(), key)

    ascend(gradient, x, norm.project(delta, eps), norm=norm, eps=eps, steps=steps, rule=FixedStep(step_size),
           bounds=model.bounds, observe=observe)
    assert best is not None  # observe runs at least once, on the final point
    return best.x

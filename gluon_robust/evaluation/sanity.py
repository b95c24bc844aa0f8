"""Sanity checks that flag an evaluation which is probably too optimistic.

Gradient masking makes white-box attacks fail without the model being robust
(Athalye, Carlini & Wagner 2018, "Obfuscated Gradients Give a False Sense of
Security", https://arxiv.org/abs/1802.00420); AutoAttack (Croce & Hein 2020,
https://arxiv.org/abs/2003.01690) checks for its usual causes. Two kinds of
checks live here:

* :func:`probe_model` looks at the model itself on a small probe batch: is it
  random, does it output probabilities, are its input gradients zero or NaN,
  does an unbounded PGD attack reach about 0% accuracy;
* :func:`report_warnings` looks at the per-sample results of a report: does a
  black-box attack break points the white-box ones did not, does accuracy fall
  as epsilon grows, did any attack return a point outside the ball or bounds.

Both return plain messages; :func:`emit` sends them to ``warnings`` and
``logging``. Everything is recomputed from data in ``report.json`` or from a
probe that does not depend on sharding, so merged shard reports agree.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from mxnet import autograd, nd

from ..attacks.base import input_gradient
from ..attacks.losses import margin
from ..attacks.norms import get_norm

__all__ = ["SanityWarning", "probe_model", "report_warnings", "accuracy_warnings", "emit", "ZERO_GRADIENT_FRACTION",
           "UNBOUNDED_ACCURACY"]

logger = logging.getLogger(__name__)

#: Warn when at least this fraction of probe points has a zero or NaN input gradient.
ZERO_GRADIENT_FRACTION = 0.1
#: Warn when an unbounded attack leaves more than this accuracy on the probe.
UNBOUNDED_ACCURACY = 0.05


class SanityWarning(UserWarning):
    """An evaluation result that may be unreliable (possible gradient masking, accuracy at chance)."""


def accuracy_warnings(n: int, correct: int, num_classes: Any, what: str = "clean accuracy") -> List[str]:
    """Warnings for a clean accuracy that cannot be trusted: no samples, or at or below chance.

    A trained classifier on its own kind of data is far above chance
    (``1 / num_classes``); at or below it, the numbers measure a setup
    mistake, not robustness. The rule is literal ("``correct / n <= 1 /
    num_classes``"), so a few samples can trigger it by bad luck; it only warns.

    Parameters
    ----------
    n : int
        Samples evaluated.
    correct : int
        Samples classified correctly.
    num_classes : int or None
        Classes of the model; None skips the chance check.
    what : str
        What the accuracy is called in the message.

    Returns
    -------
    list of str
        Empty when nothing looks wrong.
    """
    if n == 0:
        return ["no samples were evaluated (an empty data slice): every accuracy is reported as 0"]
    if not num_classes or int(num_classes) < 2 or correct * int(num_classes) > n:
        return []
    return [
        f"{what} {100 * correct / n:.1f}% ({correct} of {n}) is at or below chance (1/{int(num_classes)} = "
        f"{100 / int(num_classes):.2g}%): the numbers are probably meaningless. Likely causes: the label mapping "
        "(folder names or --labels do not match the model's classes), the preprocessing or normalisation "
        "(--mean/--std/--bounds), or wrong or missing weights (--params/--pretrained)"
    ]


def emit(messages: Sequence[str]) -> None:
    """Send each message to :mod:`warnings` (as :class:`SanityWarning`) and to the log."""
    for message in messages:
        logger.warning("sanity check: %s", message)
        warnings.warn(message, SanityWarning, stacklevel=2)


def probe_model(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    norm: str,
    seed: int = 0,
    unbounded_steps: int = 20,
) -> Tuple[Dict[str, Any], List[str]]:
    """Check the model on a probe batch.

    Parameters
    ----------
    model : Classifier
        The model under evaluation.
    x, y : numpy.ndarray
        A few samples (the same for every shard of an evaluation).
    norm : str
        Threat model of the unbounded attack (``"linf"`` or ``"l2"``).
    seed : int
        Seed of the unbounded attack.
    unbounded_steps : int
        Steps of PGD at an epsilon covering the whole input range.

    Returns
    -------
    measurements : dict
        ``random`` (largest difference of two forward passes), ``probabilities``
        (outputs look like probabilities), ``zero_gradient_fraction``,
        ``unbounded_accuracy`` (accuracy on the correctly classified probe
        points after unbounded PGD; None when none is correct).
    warnings : list of str
    """
    messages: List[str] = []
    first, spread, probabilities = _output_checks(model, x, messages)
    zero_fraction = _gradient_check(model, x, y, messages)
    unbounded = _unbounded_check(model, x, y, first, norm=norm, seed=seed, steps=unbounded_steps, messages=messages)
    measurements = {
        "probe_size": int(len(x)),
        "random": spread,
        "probabilities": probabilities,
        "zero_gradient_fraction": zero_fraction,
        "unbounded_accuracy": unbounded,
    }
    return measurements, messages


def _output_checks(model: Any, x: np.ndarray, messages: List[str]) -> Tuple[np.ndarray, float, bool]:
    """Two forward passes: the outputs, their largest difference (randomness) and whether they look like probabilities."""
    first, second = model.predict(x), model.predict(x)
    spread = float(np.max(np.abs(first - second))) if len(x) else 0.0
    if spread > 1e-5 or not np.isfinite(spread):
        eot = int(getattr(model, "eot_samples", 1) or 1)
        hint = (f"EOT is applied ({eot} samples per gradient)" if eot > 1
                else "use the 'rand' recipe (EOT) for randomised defences")
        messages.append(f"the model is random: two forward passes on the same inputs differ by up to {spread:.3g}; {hint}")
    sums = first.sum(axis=1)
    probabilities = bool(len(x) and np.all(first >= -1e-6) and np.allclose(sums, 1.0, atol=1e-3))
    if probabilities:
        messages.append(
            "the model outputs look like probabilities (non-negative, rows sum to 1); attacks expect logits, "
            "and a softmax at the end can saturate gradients: remove it"
        )
    return first, spread, probabilities


def _gradient_check(model: Any, x: np.ndarray, y: np.ndarray, messages: List[str]) -> float:
    """The fraction of probe points whose input gradient (of the margin loss) is zero or not finite."""
    ctx = getattr(model, "ctx", None)
    xs = nd.array(x, ctx=ctx, dtype="float32")
    ys = nd.array(y, ctx=ctx, dtype="float32")
    grad, _, _ = input_gradient(model, xs, ys, None, margin)
    with autograd.pause():
        g = grad.reshape((len(x), -1)).asnumpy()
    flat = ~np.isfinite(g).all(axis=1) | (np.abs(np.nan_to_num(g)).max(axis=1) == 0)
    zero_fraction = float(flat.mean()) if len(x) else 0.0
    if zero_fraction >= ZERO_GRADIENT_FRACTION:
        messages.append(
            f"{int(flat.sum())} of {len(x)} probe points have a zero or NaN input gradient: "
            "gradient masking (e.g. a non-differentiable layer); attack it with BPDA or black-box attacks"
        )
    return zero_fraction


def _unbounded_check(model: Any, x: np.ndarray, y: np.ndarray, first: np.ndarray, *, norm: str, seed: int,
                     steps: int, messages: List[str]) -> Optional[float]:
    """Accuracy on the correctly classified probe points after PGD over the whole input range (None if none is)."""
    from ..attacks import get_attack

    low, high = model.bounds
    correct = first.argmax(axis=1) == y
    if not correct.any():
        return None
    size = float(np.prod(x.shape[1:]))
    big = get_norm(norm).unbounded_radius(high - low, size)
    attack = get_attack("pgd", eps=big, norm=norm, steps=steps, seed=seed)
    result = attack(model, x[correct], y[correct])
    unbounded = float(np.mean(result.predictions == y[correct]))
    if unbounded > UNBOUNDED_ACCURACY:
        messages.append(
            f"unbounded PGD ({norm}, eps={big:.3g}, the whole input range) leaves {100 * unbounded:.1f}% "
            "accuracy instead of about 0%: a sign of gradient masking"
        )
    return unbounded


def report_warnings(report: Dict[str, Any]) -> List[str]:
    """Checks on the per-sample results of a report (see :meth:`RobustnessResult.to_report`)."""
    messages: List[str] = []
    attacks = report["attacks"]
    samples = report["per_sample"]
    if "n" in report:  # clean accuracy at or below chance, or no samples at all
        n = int(report["n"])
        messages += accuracy_warnings(n, int(round(report["clean_accuracy"] * n)), report.get("num_classes"))

    # Black-box attacks that break points no white-box attack of the threat model broke.
    groups: Dict[Tuple[str, Any], List[int]] = defaultdict(list)
    for k, a in enumerate(attacks):
        groups[(a["norm"], a["eps"])].append(k)
    for (norm, eps), ks in groups.items():
        black = [k for k in ks if attacks[k].get("black_box")]
        white = [k for k in ks if not attacks[k].get("black_box")]
        if not black or not white:
            continue
        count = sum(
            1 for s in samples
            if any(s["outcomes"][k]["broken"] for k in black) and not any(s["outcomes"][k]["broken"] for k in white)
        )
        if count:
            names = ", ".join(attacks[k]["name"] for k in black)
            messages.append(
                f"black-box {names} broke {count} points the white-box attacks did not ({norm}, eps={eps}): "
                "the white-box attacks are probably weakened by gradient masking"
            )

    # Accuracy must fall (or stay at 0) as epsilon grows.
    by_norm: Dict[str, List[Tuple[float, float]]] = defaultdict(list)
    for w in report["worst_case"]:
        if w["eps"] is not None:
            by_norm[w["norm"]].append((w["eps"], w["robust_accuracy"]))
    for norm, points in by_norm.items():
        points.sort()
        rises = [(a, b) for a, b in zip(points, points[1:]) if b[1] > a[1]]
        for (e0, r0), (e1, r1) in rises:
            messages.append(
                f"robust accuracy rises from {100 * r0:.1f}% at eps={e0:g} to {100 * r1:.1f}% at eps={e1:g} ({norm}): "
                "the attacks are not converging"
            )
        if len(points) > 1 and not rises and points[-1][1] > 0 and points[-1][1] >= report["clean_accuracy"]:
            messages.append(
                f"robust accuracy does not fall as eps grows ({norm}, up to eps={points[-1][0]:g}): "
                "the attacks have no effect, a sign of gradient masking"
            )

    for a in attacks:
        if a.get("invalid"):
            messages.append(
                f"{a['name']} ({a['norm']}, eps={a['eps']}) returned {a['invalid']} points outside the eps-ball "
                "or the input bounds"
            )
    return messages

"""Attack objectives on logits: each returns a per-sample value to *ascend*.

Untargeted objectives grow as the true class loses; targeted ones grow as the
target class wins. All are written with ``mxnet.nd`` operators so that they
are differentiable inside ``autograd.record``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

from mxnet import nd

from ..errors import ConfigError

__all__ = ["LossFn", "cross_entropy", "margin", "dlr", "get_loss", "LOSSES"]

LossFn = Callable[[nd.NDArray, nd.NDArray, Optional[nd.NDArray]], nd.NDArray]
_NEG = -1e30


def _pick(logits: nd.NDArray, labels: nd.NDArray) -> nd.NDArray:
    return nd.pick(logits, labels, axis=1)


def _max_other(logits: nd.NDArray, labels: nd.NDArray) -> nd.NDArray:
    """The largest logit among the classes other than ``labels``."""
    onehot = nd.one_hot(labels, logits.shape[1])
    return nd.max(nd.where(onehot, nd.full(logits.shape, _NEG, ctx=logits.context), logits), axis=1)


def cross_entropy(logits: nd.NDArray, labels: nd.NDArray, target: Optional[nd.NDArray] = None) -> nd.NDArray:
    """Cross-entropy of the true class (untargeted), or log-probability of the target (targeted)."""
    logp = nd.log_softmax(logits, axis=1)
    if target is None:
        return -_pick(logp, labels)
    return _pick(logp, target)


def margin(logits: nd.NDArray, labels: nd.NDArray, target: Optional[nd.NDArray] = None) -> nd.NDArray:
    """The Carlini & Wagner (2017) logit margin.

    Untargeted: ``max_{j != y} z_j - z_y``; targeted: ``z_t - max_{j != t} z_j``.
    Positive exactly when the attack has succeeded.
    """
    if target is None:
        return _max_other(logits, labels) - _pick(logits, labels)
    return _pick(logits, target) - _max_other(logits, target)


def dlr(logits: nd.NDArray, labels: nd.NDArray, target: Optional[nd.NDArray] = None) -> nd.NDArray:
    """Difference of Logits Ratio (Croce & Hein 2020, "Reliable evaluation of
    adversarial robustness with an ensemble of diverse parameter-free attacks").

    Invariant to shifting and rescaling the logits. Untargeted:
    ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``; targeted:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, with ``z_pi`` the sorted logits.
    """
    srt = nd.sort(logits, axis=1, is_ascend=False)
    if target is None:
        denom = srt[:, 0] - srt[:, 2] + 1e-12
        return -(_pick(logits, labels) - _max_other(logits, labels)) / denom
    if logits.shape[1] < 4:
        raise ConfigError(f"targeted DLR needs at least 4 classes, the model has {logits.shape[1]}")
    denom = srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12
    return -(_pick(logits, labels) - _pick(logits, target)) / denom


LOSSES: Dict[str, LossFn] = {"ce": cross_entropy, "margin": margin, "cw": margin, "dlr": dlr}


def get_loss(name: str | LossFn) -> LossFn:
    """A loss by name (``ce``, ``margin``/``cw``, ``dlr``) or a callable passed through."""
    if callable(name):
        return name
    key = str(name).strip().lower()
    if key not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[key]

"""Ensembles of classifiers that look like one classifier to attacks and evaluation.

Averaging the outputs of several networks is the plainest model-level
defence; its robustness must be measured by attacking the ensemble as a whole
(Tramer, Kurakin, Papernot, Goodfellow, Boneh & McDaniel 2018, "Ensemble
Adversarial Training: Attacks and Defenses", https://arxiv.org/abs/1705.07204;
He, Wei, Chen, Carlini & Song 2017, "Adversarial Example Defenses: Ensembles
of Weak Defenses are not Strong", https://arxiv.org/abs/1706.04701).

Three ways to combine the members' outputs:

* ``"logits"``: the mean of the members' logits (differentiable, exact gradients);
* ``"probs"``: the mean of their softmax probabilities, returned as
  *log*-probabilities so that attack losses (cross-entropy, margin) apply
  unchanged: ``log_softmax`` of these is the same array (differentiable, exact);
* ``"vote"``: majority vote: each member votes for its top class; the output
  is the vote count per class plus half the mean probability, which only
  breaks ties (counts differ by at least 1). The vote is piecewise constant,
  so its gradient is useless: while recording, the backward pass of the vote
  is the identity onto the mean logits (BPDA, Athalye, Carlini & Wagner 2018,
  "Obfuscated Gradients Give a False Sense of Security",
  https://arxiv.org/abs/1802.00420), an :class:`mxnet.autograd.Function`, so
  that gradient attacks evaluate it adaptively.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from ..errors import ConfigError
from ..model import predict_in_chunks

__all__ = ["Ensemble", "ENSEMBLE_MODES"]

logger = logging.getLogger(__name__)

#: The combination rules.
ENSEMBLE_MODES = ("logits", "probs", "vote")
#: How gradients pass through each rule (see :mod:`gluon_robust.defenses`).
_GRADIENT = {"logits": "exact", "probs": "exact", "vote": "bpda"}


class _VoteWithMeanLogitGradient(autograd.Function):
    """Forward: the vote scores; backward: the incoming gradient goes to the mean logits unchanged (BPDA).

    The differentiable input comes first: MXNet 1.9's ``Function`` stops writing input gradients at the
    first input that needs none.
    """

    def forward(self, mean_logits: nd.NDArray, votes: nd.NDArray) -> nd.NDArray:  # noqa: D102
        return votes.copy()

    def backward(self, grad: nd.NDArray) -> Tuple[nd.NDArray, nd.NDArray]:  # noqa: D102
        return grad, nd.zeros_like(grad)


class Ensemble(gluon.Block):
    """Several classifiers combined into one, with the attributes attacks and evaluation use.

    Parameters
    ----------
    members : sequence of Classifier
        At least one classifier (:func:`~gluon_robust.model.load_classifier`);
        all must have the same ``bounds``, ``num_classes``, ``input_size`` and ``ctx``.
    mode : str
        ``"logits"`` (default), ``"probs"`` or ``"vote"``; see the module docstring.

    Attributes
    ----------
    bounds, num_classes, input_size, ctx
        Those of the members.
    folded, mode_free : bool
        True when true of every member (``mode_free`` selects train-mode
        recording for gradients, see :func:`gluon_robust.attacks.base.gradient_recording`).
    gradient : str
        ``"exact"`` for ``logits`` and ``probs``, ``"bpda"`` for ``vote``.

    Raises
    ------
    ConfigError
        For an empty member list, an unknown mode, or members that disagree.

    Examples
    --------
    >>> members = [load_classifier("mnist_resnet20"), load_classifier("my_model.yaml")]
    >>> ensemble = Ensemble(members, mode="probs")
    >>> PGD(eps=0.1)(ensemble, x, y).success.mean()
    """

    def __init__(self, members: Sequence[gluon.Block], *, mode: str = "logits") -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        key = str(mode).strip().lower() if isinstance(mode, str) else mode
        if key not in ENSEMBLE_MODES:
            raise ConfigError(f"mode must be one of {', '.join(ENSEMBLE_MODES)}, got {mode!r}")
        self.mode = key
        first = members[0]
        for attribute in ("bounds", "num_classes", "ctx"):
            if not hasattr(first, attribute):
                raise ConfigError(f"ensemble members must have {attribute} (use load_classifier); "
                                  f"member 0 is a {type(first).__name__}")
        self.bounds = tuple(float(b) for b in first.bounds)
        self.num_classes = int(first.num_classes)
        self.ctx = first.ctx
        size = getattr(first, "input_size", None)
        self.input_size = tuple(size) if size is not None else None
        for i, member in enumerate(members[1:], start=1):
            _check_member(i, member, self.bounds, self.num_classes, self.input_size, self.ctx)
        self.folded = all(bool(getattr(m, "folded", False)) for m in members)
        self.mode_free = all(bool(getattr(m, "mode_free", False)) for m in members)
        self.gradient = _GRADIENT[self.mode]
        self.arch = f"ensemble[{self.mode}]({', '.join(str(getattr(m, 'arch', type(m).__name__)) for m in members)})"
        self._members = tuple(members)
        with self.name_scope():
            for i, member in enumerate(members):
                self.register_child(member, f"member{i}")

    @property
    def members(self) -> Tuple[gluon.Block, ...]:
        """The member classifiers, in order."""
        return tuple(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def forward(self, x: nd.NDArray) -> nd.NDArray:  # noqa: D102 (documented on the class)
        logits = [member(x) for member in self._members]
        if self.mode == "logits":
            return _mean(logits)
        if self.mode == "probs":
            # log of the mean probability, computed stably as log-mean-exp of the members' log-probabilities
            logp = nd.stack(*[nd.log_softmax(z, axis=1) for z in logits], axis=0)
            top = nd.max(logp, axis=0).detach()
            return top + nd.log(nd.mean(nd.exp(nd.broadcast_sub(logp, top.expand_dims(0))), axis=0))
        with autograd.pause():
            votes = nd.add_n(*[nd.one_hot(z.argmax(axis=1), self.num_classes) for z in logits])
            scores = votes + 0.5 * _mean([nd.softmax(z, axis=1) for z in logits])
        if not autograd.is_recording():
            return scores
        return _VoteWithMeanLogitGradient()(_mean(logits), scores)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Scores for a NumPy batch (mean logits, log mean probabilities or votes), in eval mode."""
        return predict_in_chunks(self, x, self.ctx, self.num_classes, batch_size)

    def describe(self) -> str:
        """One line saying what this ensemble is."""
        size = "x".join(map(str, self.input_size)) if self.input_size else "any size"
        return (f"ensemble of {len(self)} ({self.mode}, gradient {self.gradient}): "
                f"{', '.join(str(getattr(m, 'arch', type(m).__name__)) for m in self._members)} | "
                f"{self.num_classes} classes | input {size} | bounds {self.bounds} | {self.ctx}")

    @classmethod
    def from_sources(cls, sources: Sequence[Any], *, mode: str = "logits", ctx: Optional[mx.Context] = None,
                     **kwargs: Any) -> "Ensemble":
        """Load each source with :func:`~gluon_robust.model.load_classifier` (same options) and combine them."""
        from ..model import load_classifier

        return cls([load_classifier(source, ctx=ctx, **kwargs) for source in sources], mode=mode)


def _mean(arrays: Sequence[nd.NDArray]) -> nd.NDArray:
    return arrays[0] if len(arrays) == 1 else nd.add_n(*arrays) / len(arrays)


def _check_member(index: int, member: Any, bounds: Tuple[float, float], num_classes: int,
                  input_size: Optional[Tuple[int, ...]], ctx: mx.Context) -> None:
    """ConfigError naming the member and the first attribute that differs from member 0."""
    own_bounds = getattr(member, "bounds", None)
    if own_bounds is None or tuple(float(b) for b in own_bounds) != bounds:
        raise ConfigError(f"ensemble member {index} has bounds {own_bounds}, member 0 has {bounds}")
    if getattr(member, "num_classes", None) != num_classes:
        raise ConfigError(f"ensemble member {index} has {getattr(member, 'num_classes', None)} classes, "
                          f"member 0 has {num_classes}")
    size = getattr(member, "input_size", None)
    if (tuple(size) if size is not None else None) != input_size:
        raise ConfigError(f"ensemble member {index} takes inputs {size}, member 0 takes {input_size}")
    if getattr(member, "ctx", None) != ctx:
        raise ConfigError(f"ensemble member {index} lives on {getattr(member, 'ctx', None)}, member 0 on {ctx}")

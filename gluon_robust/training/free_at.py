"""Free adversarial training: each batch replayed m times with a persistent perturbation.

Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor & Goldstein
(2019), "Adversarial Training for Free!", NeurIPS, https://arxiv.org/abs/1904.12843.
The backward pass that computes the parameter gradient also gives the
gradient with respect to the perturbation, so the perturbation is updated at
no extra cost: ``delta <- Proj(delta + eps * sign(grad_delta))`` after every
replay, and it carries over from one batch to the next. Divide the number of
epochs by ``replays`` to keep the cost of natural training.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from ..attacks.engine import ball_step
from ..validation import check_int
from .adversarial import AdversarialMethod, bounds_of, cross_entropy

__all__ = ["FreeAT"]


class FreeAT(AdversarialMethod):
    """Free-AT (Shafahi et al. 2019): replay each batch, updating one perturbation from its own backward.

    The method keeps, per context, the perturbation ``delta``. Each call
    first applies the update from the gradient the user's previous
    ``backward`` left on ``delta`` (nothing, if there was none), then returns
    ``CE(f(clip(x + delta)), y)`` with ``delta`` attached to the graph. The
    loop must repeat each batch :attr:`replays` times, with a
    ``backward`` and a ``trainer.step`` each time::

        for x, y in batches:
            for _ in range(method.replays):
                with autograd.record():
                    loss = method(model, x, y)
                loss.backward()
                trainer.step(x.shape[0])

    Parameters
    ----------
    eps, norm
        The threat model, as in :class:`~gluon_robust.training.adversarial.AdversarialMethod`.
    replays : int
        How many times each batch is replayed (``m`` in the paper, default 4).
    step_size : float, optional
        Perturbation step; default ``eps`` (the paper's choice).
    seed : int
        Unused (the perturbation starts at zero); kept for a uniform interface.

    Notes
    -----
    The perturbation is kept per context, so with ``split_and_load`` each
    shard must live on its own context. Batches smaller than the stored
    perturbation use its first rows; larger ones extend it with zeros.
    """

    name = "free-at"
    default_step_factor = 1.0

    def __init__(self, *, eps: float, norm: str = "linf", replays: int = 4, step_size: Optional[float] = None,
                 seed: int = 0) -> None:
        super().__init__(eps=eps, norm=norm, steps=1, step_size=step_size, seed=seed)
        self.replays = check_int("replays", replays)
        self._delta: Dict[str, nd.NDArray] = {}
        self._used: Dict[str, nd.NDArray] = {}

    def set_budget(self, *, eps: Optional[float] = None, steps: Optional[int] = None) -> None:
        """Change ``eps``; ``steps`` does not apply to Free-AT."""
        super().set_budget(eps=eps)

    def _flush(self, key: str) -> None:
        """Apply the update from the gradient the last backward left on the perturbation used."""
        used = self._used.pop(key, None)
        if used is None:
            return
        grad = used.grad if used.grad is not None else nd.zeros_like(used)
        updated = ball_step(self.norm, used.detach(), self.norm.direction(grad), self.step_size, self.eps)
        self._delta[key][: used.shape[0]] = updated

    def _fitted(self, key: str, x: nd.NDArray) -> nd.NDArray:
        stored = self._delta.get(key)
        if stored is None or stored.shape[1:] != x.shape[1:]:
            stored = nd.zeros(x.shape, ctx=x.context, dtype="float32")
        elif stored.shape[0] < x.shape[0]:
            extra = nd.zeros((x.shape[0] - stored.shape[0],) + x.shape[1:], ctx=x.context, dtype="float32")
            stored = nd.concat(stored, extra, dim=0)
        self._delta[key] = stored
        return stored[: x.shape[0]].copy()

    def _loss(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        key = str(x.context)
        self._flush(key)
        delta = self.norm.project(self._fitted(key, x), self.eps)  # eps may have shrunk (curriculum)
        delta.attach_grad()
        self._used[key] = delta
        low, high = bounds_of(model)
        return cross_entropy(model(nd.clip(x + delta, low, high)), y)

    def perturb(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        """The batch the next call would train on (the persistent perturbation applied), detached."""
        key = str(x.context)
        self._flush(key)
        low, high = bounds_of(model)
        return nd.clip(x + self.norm.project(self._fitted(key, x), self.eps), low, high).detach()

    def state_dict(self) -> Dict[str, Any]:
        """Call counts and the perturbations (pending updates applied), as NumPy arrays."""
        for key in list(self._used):
            self._flush(key)
        state = super().state_dict()
        state["delta"] = {key: value.asnumpy() for key, value in self._delta.items()}
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._used = {}
        self._delta = {}
        for key, value in dict(state.get("delta", {})).items():
            self._delta[key] = nd.array(np.asarray(value), ctx=_context(key), dtype="float32")


def _context(key: str) -> mx.Context:
    """The context whose ``str`` is ``key`` (``cpu(0)``, ``gpu(1)``)."""
    kind, _, rest = key.partition("(")
    return mx.Context(kind, int(rest.rstrip(")") or 0))

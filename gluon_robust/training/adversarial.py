"""The base of every training method: a helper that turns a clean batch into the loss to train on.

A training method never owns the loop. Inside the user's own
``autograd.record()`` it is called on a clean batch, or on each
``split_and_load`` shard, and returns the per-sample loss; the user keeps
``backward`` and ``trainer.step``::

    method = PGDAT(eps=0.3, steps=10)
    for x, y in batches:
        xs = gluon.utils.split_and_load(x, ctx)
        ys = gluon.utils.split_and_load(y, ctx)
        with autograd.record():
            losses = [method(model, xi, yi) for xi, yi in zip(xs, ys)]
        autograd.backward(losses)
        trainer.step(len(x))

Guarantees, for every method:

* Parameters change only through the user's ``trainer.step``. The attack
  differentiates with respect to the input only (``autograd.grad``), under
  ``autograd.pause`` so that nothing of it is recorded on the user's tape, and
  it restores the BatchNorm running statistics its backward passes moved
  (see :mod:`.batchnorm`). The running statistics are then updated only by
  the training forwards, in the user's ``backward``, as in any Gluon loop.
* Randomness (random starts) comes from one NumPy generator per sample,
  seeded by the method's ``seed``, the number of calls made so far on the
  shard's context and the sample's bytes. A sample therefore draws the same
  numbers whichever shard it lands in, so training on a context list equals
  training on one context; and :meth:`TrainingMethod.state_dict` captures
  everything needed to resume exactly.
* The attack records in train mode only: eval-mode BatchNorm input gradients
  and MKLDNN max-pool gradients after an eval-mode forward are wrong in
  MXNet 1.9.1 (``attack_bn="eval"`` differentiates a folded, BatchNorm-free
  copy instead).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import zlib
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Tuple

import numpy as np
from mxnet import autograd, gluon, nd

from ..attacks.engine import FixedStep, ascend
from ..attacks.norms import Norm, get_norm
from ..errors import ConfigError, DataError
from ..model import check_trainable
from ..validation import check_choice, check_int, check_positive
from .batchnorm import ATTACK_BN_MODES, EvalMirror, preserve_running_stats

__all__ = ["TrainingMethod", "AdversarialMethod", "cross_entropy", "kl_divergence", "Objective"]

logger = logging.getLogger(__name__)

#: ``objective(logits) -> (N,)``: the per-sample value an attack ascends.
Objective = Callable[[nd.NDArray], nd.NDArray]


def cross_entropy(logits: nd.NDArray, labels: nd.NDArray) -> nd.NDArray:
    """Per-sample cross-entropy ``-log softmax(logits)[y]``, shape (N,)."""
    return -nd.pick(nd.log_softmax(logits, axis=1), labels, axis=1)


def kl_divergence(p_logits: nd.NDArray, q_logits: nd.NDArray) -> nd.NDArray:
    """Per-sample ``KL(softmax(p) || softmax(q)) = sum_k p_k (log p_k - log q_k)``, shape (N,)."""
    log_p = nd.log_softmax(p_logits, axis=1)
    log_q = nd.log_softmax(q_logits, axis=1)
    return nd.sum(nd.exp(log_p) * (log_p - log_q), axis=1)


def bounds_of(model: gluon.Block) -> Tuple[float, float]:
    """The model's valid pixel range (``model.bounds``), default ``(0, 1)``."""
    low, high = getattr(model, "bounds", (0.0, 1.0))
    return float(low), float(high)


class TrainingMethod(abc.ABC):
    """Base class of the training helpers; subclasses implement :meth:`_loss`.

    Parameters
    ----------
    seed : int
        Seed of every random draw the method makes.

    Attributes
    ----------
    replays : int
        How many times the loop should repeat each batch (Free-AT; 1 otherwise).
    """

    #: Registry name, set by subclasses.
    name: ClassVar[str] = "method"
    #: Whether the method crafts adversarial examples (and takes eps).
    adversarial: ClassVar[bool] = False

    def __init__(self, *, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.replays = 1
        self._calls: Dict[str, int] = {}
        self._call_index = 0

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()) if not k.startswith("_"))
        return f"{type(self).__name__}({params})"

    # ------------------------------------------------------------- contract
    def __call__(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        """The per-sample loss to backpropagate for a clean batch (or shard).

        Call it inside ``autograd.record()``; it records only the training
        forwards (the attack runs under ``autograd.pause``).

        Parameters
        ----------
        model : Block
            The model under training (a :class:`~gluon_robust.model.Classifier`
            from :func:`~gluon_robust.model.trainable_classifier`, or any block
            on pixel inputs). A frozen evaluation model (from
            :func:`~gluon_robust.model.load_classifier`) is refused with a
            :class:`~gluon_robust.errors.ModelError` saying what to use instead.
        x : NDArray
            Clean inputs (N, ...) inside ``model.bounds``, on one context.
        y : NDArray
            Integer class labels (N,), any dtype, on any context.

        Returns
        -------
        NDArray
            Per-sample loss (N,) on ``x.context``: pass it to ``backward`` and
            call ``trainer.step(batch_size)``.
        """
        check_trainable(model)
        if not isinstance(x, nd.NDArray):
            raise DataError(f"x must be an mxnet NDArray on the shard's context, got {type(x).__name__}")
        if x.ndim < 2 or x.shape[0] == 0:
            raise DataError(f"x must be a non-empty batch (N, ...), got shape {x.shape}")
        y = y if isinstance(y, nd.NDArray) else nd.array(np.asarray(y))
        if y.shape != (x.shape[0],):
            raise DataError(f"y must have shape ({x.shape[0]},), got {y.shape}")
        key = str(x.context)
        self._call_index = self._calls.get(key, 0)
        self._calls[key] = self._call_index + 1
        return self._loss(model, x, y.as_in_context(x.context).astype("float32"))

    @abc.abstractmethod
    def _loss(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        """The per-sample loss; ``y`` is float32 on ``x.context``."""

    def set_budget(self, *, eps: Optional[float] = None, steps: Optional[int] = None) -> None:
        """Change the attack budget (a curriculum calls this); methods without an attack ignore it."""

    # ---------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume exactly: JSON-friendly values plus NumPy arrays."""
        return {"calls": dict(self._calls)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._calls = {str(k): int(v) for k, v in dict(state.get("calls", {})).items()}

    # -------------------------------------------------------------- helpers
    def _generators(self, x: nd.NDArray) -> List[np.random.Generator]:
        """One generator per sample of this call, independent of the shard the sample is in."""
        rows = x.asnumpy()
        return [np.random.default_rng([self.seed, self._call_index, zlib.crc32(row.tobytes())]) for row in rows]


class AdversarialMethod(TrainingMethod):
    """A training method built on an attack inside an epsilon-ball.

    Parameters
    ----------
    eps : float
        Radius of the threat model in pixel units (0 trains on clean inputs).
    norm : str
        ``"linf"`` or ``"l2"``.
    steps : int
        Attack steps.
    step_size : float, optional
        Absolute attack step; default :attr:`default_step_factor` ``* eps / steps``.
    attack_bn : str
        ``"train"``: the attack uses batch statistics (records in train
        mode); ``"eval"``: it differentiates an exact, BatchNorm-free copy of
        the eval-mode model, refreshed on every call. See :mod:`.batchnorm`.
    attack_updates_stats : bool
        Let the attack's backward passes move the BatchNorm running
        statistics (MXNet updates them in every train-mode backward). Off by
        default: they are snapshot and restored around the attack.
    seed : int
        Seed of the random starts.
    """

    adversarial = True
    norms: ClassVar[Tuple[str, ...]] = ("linf", "l2")
    #: Default step size as a multiple of ``eps / steps``.
    default_step_factor: ClassVar[float] = 2.5

    def __init__(self, *, eps: float, norm: str = "linf", steps: int = 10, step_size: Optional[float] = None,
                 attack_bn: str = "train", attack_updates_stats: bool = False, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.norm: Norm = get_norm(norm)
        if self.norm.name not in self.norms:
            raise ConfigError(f"{self.name} supports norms {', '.join(self.norms)}; got norm={norm!r}")
        self.eps = check_positive("eps", eps, allow_zero=True)
        self.steps = check_int("steps", steps)
        self._step_size = None if step_size is None else check_positive("step_size", step_size)
        self.attack_bn = check_choice("attack_bn", attack_bn, ATTACK_BN_MODES)
        if not isinstance(attack_updates_stats, (bool, np.bool_)):
            raise ConfigError(f"attack_updates_stats must be True or False, got {attack_updates_stats!r}")
        self.attack_updates_stats = bool(attack_updates_stats)
        self._mirrors: Dict[int, EvalMirror] = {}

    @property
    def step_size(self) -> float:
        """The absolute attack step for the current budget."""
        if self._step_size is not None:
            return self._step_size
        return self.default_step_factor * self.eps / self.steps

    def set_budget(self, *, eps: Optional[float] = None, steps: Optional[int] = None) -> None:
        """Change ``eps`` and/or ``steps`` (validated); the default step size follows them."""
        if eps is not None:
            self.eps = check_positive("eps", eps, allow_zero=True)
        if steps is not None:
            self.steps = check_int("steps", steps)

    @abc.abstractmethod
    def perturb(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        """The adversarial batch the method trains on (detached), without recording anything."""

    # ---------------------------------------------------------- the attack
    @contextlib.contextmanager
    def _attack_scope(self, model: gluon.Block, x: nd.NDArray) -> Iterator[gluon.Block]:
        """Pause the user's tape, protect the running statistics, and yield the block to attack."""
        target = model
        if self.attack_bn == "eval":
            mirror = self._mirrors.setdefault(id(model), EvalMirror(model))
            target = mirror.get(x.context, x.shape)
            if not getattr(target, "mode_free", False):
                logger.warning("%s: layers other than BatchNorm depend on train/eval mode; attack_bn='eval' "
                               "still records them in train mode", self.name)
        protect = self.attack_bn == "train" and not self.attack_updates_stats
        with autograd.pause(train_mode=True), preserve_running_stats(model, x.context, enabled=protect):
            yield target

    def _random_start(self, x: nd.NDArray, eps: float) -> nd.NDArray:
        """A uniform point of the ball per sample, from the per-sample generators."""
        noise = self.norm.random_start(self._generators(x), tuple(x.shape[1:]), eps)
        return nd.array(noise, ctx=x.context, dtype="float32")

    def _gaussian_start(self, x: nd.NDArray, scale: float) -> nd.NDArray:
        """``scale * N(0, 1)`` per coordinate (the TRADES and MART initialisation)."""
        noise = np.stack([rng.standard_normal(tuple(x.shape[1:])) for rng in self._generators(x)]) * scale
        return nd.array(noise.astype(np.float32), ctx=x.context, dtype="float32")

    def _ce_ascent(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray, *, random_start: bool, steps: int
                   ) -> nd.NDArray:
        """Cross-entropy ascent (PGD, or FGSM with one step) from a uniform random start or from ``x``."""
        start = self._random_start(x, self.eps) if random_start else nd.zeros_like(x)
        with self._attack_scope(model, x) as target:
            return self._ascend(target, x, lambda logits: cross_entropy(logits, y), start,
                                steps=steps, step_size=self.step_size, bounds=bounds_of(model))

    def _ascend(
        self,
        target: gluon.Block,
        x: nd.NDArray,
        objective: Objective,
        start: nd.NDArray,
        *,
        steps: int,
        step_size: float,
        bounds: Tuple[float, float],
    ) -> nd.NDArray:
        """Projected steepest ascent of ``objective`` from ``x + start``; call inside :meth:`_attack_scope`.

        The loop is :func:`~gluon_robust.attacks.engine.ascend` with a fixed
        step, the gradient recorded in train mode.

        Returns the adversarial batch, detached, inside the eps-ball and the bounds.
        """
        def gradient(point: nd.NDArray) -> Tuple[nd.NDArray, None]:
            point.attach_grad()
            with autograd.record(train_mode=True):
                value = objective(target(point))
            (grad,) = autograd.grad(value, [point], retain_graph=False)
            return grad, None

        x_adv = ascend(gradient, x, self.norm.project(start, self.eps), norm=self.norm, eps=self.eps, steps=steps,
                       rule=FixedStep(step_size), bounds=bounds)
        return x_adv.detach()

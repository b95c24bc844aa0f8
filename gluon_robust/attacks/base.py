"""The attack contract, enforced once for every attack.

An attack holds only hyperparameters. Calling it, ``attack(model, x, y)`` or
``attack(model, x, y, target=t)``, runs the subclass's :meth:`Attack._run` and
then the framework guarantees, whatever the subclass did:

* the adversarial batch lies inside ``model.bounds`` and, for fixed-epsilon
  attacks, inside the epsilon-ball of the attack's norm;
* NaNs are replaced by the clean input;
* it has the shape, dtype, type (NumPy or NDArray) and ctx of the input;
* success is recomputed from a real forward pass in eval mode;
* the model's parameters and their gradients are never touched: gradients are
  taken with :func:`mxnet.autograd.grad` with respect to the input only.

The contract is sealed: a subclass that defines ``__call__`` is refused at
class creation (:class:`TypeError`). An attack declares which contract it
follows with its :class:`AttackKind`; a black-box attack changes the model it
is handed through :meth:`Attack._wrap_model`, and an attack whose call needs
more objects than ``(model, x, y)`` defines ``_extended_call`` (see
:meth:`Attack.__call__`).

Randomness comes from one generator per sample, seeded by the attack's seed
and the sample's bytes, so a sample's result does not depend on the batch it
is in, and a seed reproduces a run exactly.
"""

from __future__ import annotations

import abc
import enum
import logging
import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import mxnet as mx
import numpy as np
from mxnet import autograd, nd

from ..errors import ConfigError, DataError
from ..validation import check_int, check_labels, check_positive
from .losses import LossFn
from .norms import Norm, get_norm

__all__ = [
    "Attack", "AttackKind", "AttackResult", "input_gradient", "gradient_recording", "sample_generators", "check_positive", "check_int",
]

logger = logging.getLogger(__name__)

ArrayLike = Union[nd.NDArray, np.ndarray]


class AttackKind(enum.Enum):
    """The contract an attack follows.

    ``FIXED_EPS``: a white-box attack inside an epsilon-ball, which the
    framework projects onto. ``MINIMUM_NORM``: a white-box attack that looks
    for the smallest perturbation (FAB, C&W, DeepFool, EAD, JSMA); an optional
    ``eps`` only cuts its result. ``BLACK_BOX`` and ``BLACK_BOX_MINIMUM_NORM``:
    the same two contracts for attacks that only query the model, through a
    :class:`~gluon_robust.attacks.queries.QueryCounter`.
    """

    FIXED_EPS = "fixed_eps"
    MINIMUM_NORM = "minimum_norm"
    BLACK_BOX = "black_box"
    BLACK_BOX_MINIMUM_NORM = "black_box_minimum_norm"

    @property
    def black_box(self) -> bool:
        """Whether the attack only queries the model (forward passes, counted)."""
        return self in (AttackKind.BLACK_BOX, AttackKind.BLACK_BOX_MINIMUM_NORM)

    @property
    def minimum_norm(self) -> bool:
        """Whether the attack looks for the smallest perturbation rather than working inside a fixed ball."""
        return self in (AttackKind.MINIMUM_NORM, AttackKind.BLACK_BOX_MINIMUM_NORM)


@dataclass
class AttackResult:
    """What an attack returns.

    Attributes
    ----------
    x_adv : NDArray or numpy.ndarray
        The adversarial batch, same shape, dtype, type and ctx as the input.
    success : numpy.ndarray of bool, shape (N,)
        Misclassified (untargeted) or classified as the target (targeted),
        from a real forward pass on ``x_adv``.
    distance : numpy.ndarray of float, shape (N,)
        Perturbation size in the attack's norm.
    predictions : numpy.ndarray of int, shape (N,)
        The model's labels for ``x_adv``.
    iterations : numpy.ndarray of int, shape (N,)
        Gradient steps (white-box) or iterations spent on each sample.
    queries : numpy.ndarray of int, shape (N,)
        Model evaluations spent on each sample (forward or forward+backward).
    norm : str
        The norm of ``distance``.
    targets : numpy.ndarray of int, optional
        The target labels of a targeted attack.
    """

    x_adv: ArrayLike
    success: np.ndarray
    distance: np.ndarray
    predictions: np.ndarray
    iterations: np.ndarray
    queries: np.ndarray
    norm: str
    targets: Optional[np.ndarray] = None
    extras: Dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        """Fraction of samples on which the attack succeeded."""
        return float(self.success.mean()) if len(self.success) else 0.0


def sample_generators(x: np.ndarray, seed: int) -> List[np.random.Generator]:
    """One NumPy generator per sample, seeded by ``seed`` and the sample's bytes.

    A sample therefore draws the same random numbers alone or inside any batch.
    """
    return [np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(xi).tobytes())]) for xi in x]


def gradient_recording(model: mx.gluon.Block) -> Any:
    """The ``autograd.record`` scope under which to differentiate ``model`` with respect to its input.

    Eval mode (``train_mode=False``) in general. When the model's graph is
    *mode free* (``model.mode_free``: folded, so no BatchNorm and no Dropout
    remain), it computes the same function in both modes and train mode is
    used instead: MXNet 1.9.1's MKLDNN max-pooling backward is wrong, and not
    even deterministic, after an inference-mode forward (checked against
    finite differences in ``tests/test_attack_invariants.py``), while the
    train-mode path is exact.
    """
    return autograd.record(train_mode=bool(getattr(model, "mode_free", False)))


def input_gradient(
    model: mx.gluon.Block,
    x: nd.NDArray,
    y: nd.NDArray,
    target: Optional[nd.NDArray],
    loss: LossFn,
    eot_samples: int = 1,
) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
    """Gradient of a per-sample loss with respect to the input only, in eval mode.

    Parameters
    ----------
    model : Block
        The classifier (pixel inputs to logits).
    x : NDArray
        The point where the gradient is taken.
    y, target : NDArray
        True labels and optional targets, as float32 (N,).
    loss : callable
        ``loss(logits, y, target) -> (N,)``, the objective to ascend.
    eot_samples : int
        Average over this many forward/backward passes: Expectation over
        Transformation (Athalye et al. 2018, "Synthesizing Robust Adversarial
        Examples") for randomised models.

    Notes
    -----
    Recorded under :func:`gradient_recording`, so the gradient is the one of
    the eval-mode function.

    Returns
    -------
    grad, loss_value, logits : NDArray
        The (averaged) gradient, loss and logits; parameters get no gradient.
    """
    total_grad = None
    total_loss = None
    for _ in range(eot_samples):
        xv = x.copy()
        xv.attach_grad()
        with gradient_recording(model):
            logits = model(xv)
            value = loss(logits, y, target)
        (grad,) = autograd.grad(value, [xv], retain_graph=False)
        total_grad = grad if total_grad is None else total_grad + grad
        total_loss = value if total_loss is None else total_loss + value
    if eot_samples > 1:
        total_grad = total_grad / eot_samples
        total_loss = total_loss / eot_samples
    return total_grad, total_loss.detach(), logits.detach()


class Attack(abc.ABC):
    """Base class of every attack; subclasses implement :meth:`_run` only, never ``__call__``.

    Parameters
    ----------
    norm : str
        Threat model: ``"linf"``, ``"l2"``, ``"l1"`` or ``"l0"``.
    eps : float, optional
        Radius of the threat model for fixed-epsilon attacks (in pixel units,
        the scale of ``model.bounds``); None for minimal-perturbation attacks,
        which the framework then does not project.
    seed : int
        Seed of every random draw (random starts, random targets).
    """

    #: Registry name, set by subclasses.
    name: ClassVar[str] = "attack"
    #: Norms the attack supports; the first is its default.
    norms: ClassVar[Tuple[str, ...]] = ("linf",)
    #: Whether the attack has a targeted mode.
    supports_targeted: ClassVar[bool] = True
    #: The contract the attack follows.
    kind: ClassVar[AttackKind] = AttackKind.FIXED_EPS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} defines __call__, but Attack.__call__ is sealed: implement _run (and _wrap_model "
                "or _extended_call where the call differs) instead"
            )
        if not isinstance(cls.kind, AttackKind):
            raise TypeError(f"{cls.__name__}.kind must be an AttackKind, got {cls.kind!r}")

    def __init__(self, *, norm: str, eps: Optional[float], seed: int = 0) -> None:
        self.norm: Norm = get_norm(norm)
        if self.norm.name not in self.norms:
            raise ConfigError(f"{self.name} supports norms {', '.join(self.norms)}; got norm={norm!r}")
        self.eps = None if eps is None else check_positive("eps", eps, allow_zero=True)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()) if not k.startswith("_"))
        return f"{type(self).__name__}({params})"

    # ------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def _run(self, model: mx.gluon.Block, x: nd.NDArray, y: nd.NDArray, target: Optional[nd.NDArray],
             rngs: Sequence[np.random.Generator]) -> Tuple[nd.NDArray, Union[int, np.ndarray]]:
        """Craft adversarial inputs.

        Parameters
        ----------
        model : Block
            The classifier, with ``bounds`` and ``num_classes``.
        x : NDArray
            Clean inputs, float32, on the model's ctx.
        y : NDArray
            True labels as float32 (N,).
        target : NDArray, optional
            Target labels (float32) for a targeted attack, else None.
        rngs : sequence of numpy.random.Generator
            One generator per sample.

        Returns
        -------
        x_adv : NDArray
            Candidate adversarial inputs; the framework projects and clips them.
        iterations : int or numpy.ndarray
            Steps spent, in total or per sample.
        """

    def _queries(self, iterations: np.ndarray) -> np.ndarray:
        """Model evaluations per sample; white-box attacks spend one per iteration."""
        return iterations

    def _wrap_model(self, model: Any) -> Any:
        """The model the contract runs on; black-box attacks wrap it in a query counter."""
        return model

    # ------------------------------------------------------------- contract
    def __call__(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        """Attack a batch: ``attack(model, x, y)`` or ``attack(model, x, y, target=t)``.

        This method is sealed. It runs the standard contract of
        :meth:`_contract` (validation, :meth:`_run`, the ball and the bounds,
        a real success check, query counts, the result). An attack whose call
        takes other objects (the adaptive detector attack,
        ``attack(model, detector, x, y)``) defines
        ``_extended_call(self, model, *args, **kwargs)``; the call is then
        handed to it, and it is expected to end in the standard contract.
        """
        extended = getattr(self, "_extended_call", None)
        if extended is not None:
            return extended(model, *args, **kwargs)
        return self._contract(model, *args, **kwargs)

    def _contract(
        self,
        model: mx.gluon.Block,
        x: ArrayLike,
        y: ArrayLike,
        *,
        target: Optional[ArrayLike] = None,
    ) -> AttackResult:
        """Attack a batch under the framework's guarantees.

        Parameters
        ----------
        model : Classifier
            Pixel inputs to logits; must have ``bounds``, ``num_classes`` and ``ctx``.
        x : NDArray or numpy.ndarray
            Clean inputs (N, C, H, W) inside ``model.bounds``.
        y : NDArray or numpy.ndarray
            True labels (N,).
        target : NDArray or numpy.ndarray, optional
            Target labels (N,); makes the attack targeted.

        Returns
        -------
        AttackResult
        """
        model = self._wrap_model(model)
        if target is not None and not self.supports_targeted:
            raise ConfigError(f"{self.name} has no targeted mode")
        ctx = getattr(model, "ctx", mx.cpu())
        low, high = getattr(model, "bounds", (0.0, 1.0))
        num_classes = getattr(model, "num_classes", None)
        is_numpy = isinstance(x, np.ndarray)
        x_np = x if is_numpy else x.asnumpy()
        in_dtype = x_np.dtype
        in_ctx = ctx if is_numpy else x.context
        _check_batch(x_np, low, high, getattr(model, "input_size", None))
        y_np = check_labels("y", y, num_classes, len(x_np))
        t_np = None if target is None else check_labels("target", target, num_classes, len(x_np))
        if t_np is not None and (t_np == y_np).any():
            i = int(np.flatnonzero(t_np == y_np)[0])
            raise DataError(f"target must differ from the true label: sample {i} has label {y_np[i]} and target "
                            f"{t_np[i]} ({int((t_np == y_np).sum())} such samples); a targeted attack there would "
                            "count a success without changing anything")

        n = len(x_np)
        pad = _padded(n)
        x_pad = _pad_rows(x_np.astype(np.float32, copy=False), pad)
        x32 = nd.array(x_pad, ctx=ctx, dtype="float32")
        y32 = nd.array(_pad_rows(y_np, pad), ctx=ctx, dtype="float32")
        t32 = None if t_np is None else nd.array(_pad_rows(t_np, pad), ctx=ctx, dtype="float32")
        raw, iterations = self._run(model, x32, y32, t32, sample_generators(x_pad, self.seed))
        x_adv = self._enforce(x32, raw, low, high)

        predictions = _predict(model, x_adv)[:n]
        success = predictions != y_np if t_np is None else predictions == t_np
        distance = self.norm.distance(x_adv - x32).asnumpy().astype(np.float64)[:n]
        iterations = np.broadcast_to(np.asarray(iterations, dtype=np.int64), (pad,))[:n].copy()
        x_adv = x_adv[:n] if pad != n else x_adv
        out = x_adv.astype(in_dtype) if in_dtype != np.float32 else x_adv
        out = out.asnumpy() if is_numpy else out.as_in_context(in_ctx)
        return AttackResult(
            x_adv=out,
            success=success,
            distance=distance,
            predictions=predictions,
            iterations=iterations,
            queries=self._queries(iterations),
            norm=self.norm.name,
            targets=t_np,
        )

    def _enforce(self, x: nd.NDArray, x_adv: nd.NDArray, low: float, high: float) -> nd.NDArray:
        """Replace NaNs by the clean input, project into the eps-ball, clip to bounds."""
        if x_adv.shape != x.shape:
            raise RuntimeError(f"{self.name} returned shape {x_adv.shape} for input {x.shape}")
        x_adv = x_adv.as_in_context(x.context).astype("float32")
        x_adv = nd.where(x_adv == x_adv, x_adv, x)  # NaN != NaN
        if self.eps is not None:
            # Clipping to bounds moves coordinates towards x (x is inside bounds),
            # so it never leaves the ball again.
            x_adv = x + self.norm.project(x_adv - x, self.eps)
        return nd.clip(x_adv, low, high)


def _padded(n: int) -> int:
    """The bucketed batch size for ``n`` samples: the next of 1, 2, 3, 4, 6, 8, 12, 16, 24, ...

    MKLDNN keeps memory for every input shape it has seen (tens of MiB per
    shape for a ResNet), so attacking subsets of every possible size would
    grow memory with the dataset. Padding to these buckets bounds the shapes
    at about ``2 log2(N)`` and wastes at most a third of a batch.
    """
    power = 1 << (n - 1).bit_length()  # the smallest power of two >= n
    three_quarters = 3 * power // 4
    return three_quarters if power >= 4 and n <= three_quarters else power


def _pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    """Repeat the last row of ``a`` until it has ``size`` rows (a padded row computes like its original)."""
    if len(a) >= size:
        return a
    return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def _predict(model: mx.gluon.Block, x: nd.NDArray) -> np.ndarray:
    with autograd.pause(train_mode=False):
        return model(x).argmax(axis=1).asnumpy().astype(np.int64)


def _check_batch(x: np.ndarray, low: float, high: float, input_size: Optional[Sequence[int]]) -> None:
    if x.ndim < 2:
        raise DataError(f"inputs must be a batch (N, C, H, W), got shape {x.shape}")
    if len(x) == 0:
        raise DataError("empty batch")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"inputs must be floating point in pixel space {low}..{high}, got dtype {x.dtype}")
    if input_size is not None and tuple(x.shape[1:]) != tuple(input_size):
        raise DataError(f"inputs of shape {tuple(x.shape[1:])} do not fit the model's input size {tuple(input_size)}")
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    tol = 1e-6 * max(1.0, high - low)
    if lo < low - tol or hi > high + tol or not np.isfinite(x).all():
        raise DataError(f"inputs must lie inside the model bounds [{low}, {high}], got values in [{lo:.4g}, {hi:.4g}]")

"""The preprocessing-defence contract, the chain, BPDA, and the defended model wrapper.

A :class:`Preprocessor` maps a pixel-space batch (NDArray, NCHW, float32,
inside the model's bounds) to another batch of the same shape, and declares
how gradients pass through it:

``exact``
    The transform is built from recorded NDArray operations and autograd
    differentiates it (spatial smoothing).
``bpda``
    The transform is not usefully differentiable (NumPy/OpenCV code, or
    rounding whose derivative is zero almost everywhere). Backward Pass
    Differentiable Approximation (Athalye, Carlini & Wagner 2018, "Obfuscated
    Gradients Give a False Sense of Security", ICML,
    https://arxiv.org/abs/1802.00420): the forward pass applies the defence,
    the backward pass uses the derivative of a differentiable substitute, the
    identity by default (through :class:`mxnet.autograd.Function`).
``eot``
    The transform is randomised. Expectation over Transformation (Athalye,
    Engstrom, Ilyas & Kwok 2018, "Synthesizing Robust Adversarial Examples",
    https://arxiv.org/abs/1707.07397): attacks average the gradient over
    several random draws (their ``eot_samples``). Each draw is differentiated
    exactly when the defence is ``differentiable``, through BPDA otherwise.

:class:`DefendedClassifier` puts a chain of preprocessors in front of a
:class:`~gluon_robust.model.Classifier` and looks like one to attacks and
evaluation (``bounds``, ``num_classes``, ``ctx``, ``input_size``, ``predict``,
``describe``...). Its ``gradient`` mode chooses the backward of every defence:

* ``auto``: each defence's declared path; EOT samples when one is randomised;
* ``naive``: what a non-adaptive evaluation computes: differentiable defences
  are differentiated, the others give a zero gradient, one random draw;
* ``bpda``: the BPDA substitute for every defence, one random draw;
* ``eot``: as ``auto``, with EOT samples even for a deterministic chain.
"""

from __future__ import annotations

import abc
import inspect
import logging
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from ..errors import ConfigError, DataError
from ..model import predict_in_chunks
from ..validation import check_int

__all__ = [
    "Preprocessor", "DefenseChain", "DefendedClassifier", "BPDAFunction", "bpda", "GRADIENT_PATHS", "GRADIENT_MODES",
    "DEFAULT_EOT_SAMPLES",
]

logger = logging.getLogger(__name__)

Bounds = Tuple[float, float]

#: The gradient paths a defence can declare.
GRADIENT_PATHS = ("exact", "bpda", "eot")
#: The gradient modes of :class:`DefendedClassifier` (``--gradient``).
GRADIENT_MODES = ("auto", "naive", "bpda", "eot")
#: EOT samples per gradient when a randomised chain is attacked adaptively and no number is given.
DEFAULT_EOT_SAMPLES = 10


class Preprocessor(abc.ABC):
    """A pixel-space input transformation with a declared gradient path.

    Subclasses set :attr:`name`, :attr:`gradient` and :attr:`differentiable`,
    take keyword-only hyperparameters (stored under the same attribute names,
    so that :attr:`spec` can describe them) and implement :meth:`transform`.

    Attributes
    ----------
    name : str
        Registry name, used in specs and reports.
    gradient : str
        Declared path: ``"exact"``, ``"bpda"`` or ``"eot"`` (randomised).
    differentiable : bool
        Whether :meth:`transform` is made of recorded NDArray operations with
        a useful derivative. Required for ``exact``; for ``eot`` it says whether
        each random draw is differentiated exactly or through BPDA.
    """

    name: ClassVar[str] = "preprocessor"
    gradient: ClassVar[str] = "bpda"
    differentiable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.gradient not in GRADIENT_PATHS:
            raise TypeError(f"{cls.__name__}.gradient must be one of {GRADIENT_PATHS}, got {cls.gradient!r}")
        if cls.gradient == "exact" and not cls.differentiable:
            raise TypeError(f"{cls.__name__} declares an exact gradient but is not differentiable")

    @property
    def randomized(self) -> bool:
        """Whether two calls on the same input may differ (the declared path is ``eot``)."""
        return self.gradient == "eot"

    @abc.abstractmethod
    def transform(self, x: nd.NDArray, bounds: Bounds) -> nd.NDArray:
        """Apply the defence.

        Parameters
        ----------
        x : NDArray
            Pixel-space batch (N, C, H, W), float32, inside ``bounds``.
        bounds : tuple of float
            The model's pixel range ``(low, high)``.

        Returns
        -------
        NDArray
            Same shape, float32, same ctx, inside ``bounds``.
        """

    def substitute(self, x: nd.NDArray, bounds: Bounds) -> Optional[nd.NDArray]:
        """The differentiable substitute whose derivative BPDA uses; None means the identity."""
        return None

    def params(self) -> Dict[str, Any]:
        """The keyword hyperparameters, read back from the attributes of the same names."""
        names = [p.name for p in inspect.signature(type(self).__init__).parameters.values()
                 if p.kind == inspect.Parameter.KEYWORD_ONLY]
        return {n: getattr(self, n) for n in names if hasattr(self, n)}

    @property
    def spec(self) -> str:
        """The spec string that rebuilds this defence, e.g. ``"jpeg:quality=75"``."""
        items = ",".join(f"{k}={_spec_value(v)}" for k, v in self.params().items())
        return f"{self.name}:{items}" if items else self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"


def _spec_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if callable(value):
        module = getattr(value, "__module__", None) or ""
        return f"{module}:{getattr(value, '__qualname__', type(value).__name__)}"
    return f"{value:g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------ BPDA
class BPDAFunction(autograd.Function):
    """Forward: a defence. Backward: the identity (BPDA) or zero (a naive gradient).

    Athalye, Carlini & Wagner (2018), "Obfuscated Gradients Give a False Sense
    of Security", ICML, https://arxiv.org/abs/1802.00420, section 4.1.

    Parameters
    ----------
    fn : callable
        ``fn(x) -> y`` of the same shape; run with recording paused.
    backward : str
        ``"identity"``: the incoming gradient passes unchanged (BPDA with
        ``g(x) = x``); ``"zero"``: the output is treated as a constant, which is
        what autograd would compute through NumPy code or rounding.
    """

    def __init__(self, fn: Callable[[nd.NDArray], nd.NDArray], backward: str = "identity") -> None:
        super().__init__()
        if backward not in ("identity", "zero"):
            raise ValueError(f"backward must be 'identity' or 'zero', got {backward!r}")
        self._fn = fn
        self._backward = backward

    def forward(self, x: nd.NDArray) -> nd.NDArray:  # noqa: D102 (autograd.Function's contract)
        y = self._fn(x)
        if y.shape != x.shape:
            raise RuntimeError(f"a defence returned shape {y.shape} for input {x.shape}")
        return y.copy() if y is x else y

    def backward(self, dy: nd.NDArray) -> nd.NDArray:  # noqa: D102
        return dy if self._backward == "identity" else nd.zeros_like(dy)


def bpda(defense: Preprocessor, x: nd.NDArray, bounds: Bounds) -> nd.NDArray:
    """``defense(x)`` in the forward pass, the derivative of its substitute in the backward pass.

    With the identity substitute (the default) this is :class:`BPDAFunction`.
    Otherwise it is ``g(x) + stop_gradient(f(x) - g(x))``: the value of the
    defence ``f``, the derivative of the substitute ``g``.
    """
    if not autograd.is_recording():
        return defense.transform(x, bounds)
    with autograd.pause():
        y = defense.transform(x, bounds)
    sub = defense.substitute(x, bounds)
    if sub is None:
        return BPDAFunction(lambda _: y, "identity")(x)
    return sub + nd.BlockGrad(y - sub)


# ------------------------------------------------------------------ chain
class DefenseChain:
    """Preprocessors applied in order, each with its own backward.

    Parameters
    ----------
    defenses : sequence of Preprocessor
        Applied first to last.
    """

    def __init__(self, defenses: Sequence[Preprocessor]) -> None:
        defenses = list(defenses)
        if not defenses:
            raise ConfigError("a defence chain needs at least one defence")
        for d in defenses:
            if not isinstance(d, Preprocessor):
                raise ConfigError(f"a defence must be a Preprocessor, got {type(d).__name__}")
        self.defenses = defenses

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.defenses)

    def __len__(self) -> int:
        return len(self.defenses)

    @property
    def randomized(self) -> bool:
        """Whether any defence of the chain is randomised."""
        return any(d.randomized for d in self.defenses)

    @property
    def spec(self) -> str:
        """The chain as a spec string, defences joined by ``+``."""
        return "+".join(d.spec for d in self.defenses)

    def backwards(self, mode: str) -> List[str]:
        """Per defence, the backward used in gradient ``mode``: ``"exact"``, ``"bpda"`` or ``"zero"``."""
        if mode not in GRADIENT_MODES:
            raise ConfigError(f"gradient must be one of {', '.join(GRADIENT_MODES)}, got {mode!r}")
        out = []
        for d in self.defenses:
            if mode == "bpda":
                out.append("bpda")
            elif mode == "naive":
                out.append("exact" if d.differentiable else "zero")
            else:
                out.append("exact" if d.differentiable and d.gradient != "bpda" else "bpda")
        return out

    def __call__(self, x: nd.NDArray, bounds: Bounds, backwards: Optional[Sequence[str]] = None) -> nd.NDArray:
        """Apply every defence to ``x``; while recording, each with its backward (default ``auto``)."""
        backwards = self.backwards("auto") if backwards is None else list(backwards)
        low, high = bounds
        for d, back in zip(self.defenses, backwards):
            if not autograd.is_recording() or back == "exact":
                x = d.transform(x, bounds)
            elif back == "bpda":
                x = bpda(d, x, bounds)
            else:
                x = BPDAFunction(lambda v, d=d: d.transform(v, bounds), "zero")(x)
            x = nd.clip(x, low, high)
        return x


# ------------------------------------------------------------------ wrapper
class DefendedClassifier(gluon.Block):
    """A classifier behind a chain of preprocessing defences, attackable like the classifier itself.

    Parameters
    ----------
    model : Classifier
        The undefended model (pixel inputs; normalisation inside).
    defenses : DefenseChain or sequence of Preprocessor
        Applied in order to every input, before the model's normalisation.
    gradient : str
        ``"auto"``, ``"naive"``, ``"bpda"`` or ``"eot"`` (see the module docstring).
    eot_samples : int, optional
        Gradients attacks should average per step when the mode uses EOT;
        default :data:`DEFAULT_EOT_SAMPLES`. Read :attr:`eot_samples` for the
        number that applies (1 when the mode uses no EOT).

    Attributes
    ----------
    bounds, num_classes, ctx, input_size, folded, mode_free, arch
        Those of ``model``.
    backwards : list of str
        Per defence, the backward in use: ``"exact"``, ``"bpda"`` or ``"zero"``.

    Examples
    --------
    >>> defended = DefendedClassifier(model, [JPEGCompression(quality=75)], gradient="bpda")
    >>> result = PGD(eps=0.1, eot_samples=defended.eot_samples)(defended, x, y)
    """

    def __init__(
        self,
        model: gluon.Block,
        defenses: Union[DefenseChain, Sequence[Preprocessor]],
        *,
        gradient: str = "auto",
        eot_samples: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.chain = defenses if isinstance(defenses, DefenseChain) else DefenseChain(defenses)
        mode = str(gradient).strip().lower()
        self.backwards = self.chain.backwards(mode)
        self.gradient_mode = mode
        self.eot_samples = self.eot_samples_for(self.chain, mode, eot_samples)
        self.model = model
        self.bounds = tuple(getattr(model, "bounds", (0.0, 1.0)))
        self.num_classes = getattr(model, "num_classes", None)
        self.ctx = getattr(model, "ctx", mx.cpu())
        self.input_size = getattr(model, "input_size", None)
        self.folded = bool(getattr(model, "folded", False))
        self.mode_free = bool(getattr(model, "mode_free", False))
        self.arch = getattr(model, "arch", type(model).__name__)
        self.class_table = getattr(model, "class_table", None)  # the names of the outputs, for data and reports
        logger.info("defended model: %s, gradient %s (%s), EOT samples %d", self.chain.spec, mode,
                    ", ".join(self.backwards), self.eot_samples)

    @staticmethod
    def eot_samples_for(
        defenses: Union[DefenseChain, Sequence[Preprocessor]], gradient: str, eot_samples: Optional[int] = None
    ) -> int:
        """Gradients per attack step for ``defenses`` in mode ``gradient``: 1 unless the mode uses EOT.

        EOT is used in mode ``eot``, and in mode ``auto`` when a defence is
        randomised; the number is ``eot_samples`` (default :data:`DEFAULT_EOT_SAMPLES`).
        """
        chain = defenses if isinstance(defenses, DefenseChain) else DefenseChain(defenses)
        mode = str(gradient).strip().lower()
        chain.backwards(mode)  # validates the mode
        samples = DEFAULT_EOT_SAMPLES if eot_samples is None else check_int("eot_samples", eot_samples)
        return samples if mode == "eot" or (mode == "auto" and chain.randomized) else 1

    def forward(self, x: nd.NDArray) -> nd.NDArray:  # noqa: D102 (Block's contract)
        if x.ndim != 4:
            raise DataError(f"defences take image batches (N, C, H, W), got shape {x.shape}")
        return self.model(self.chain(x, self.bounds, self.backwards))

    def preprocess(self, x: nd.NDArray) -> nd.NDArray:
        """The defended input the model sees (one random draw for a randomised chain)."""
        with autograd.pause():
            return self.chain(x, self.bounds, self.backwards)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits for a NumPy batch, defended, in eval mode, in chunks of ``batch_size``."""
        return predict_in_chunks(self, x, self.ctx, self.num_classes, batch_size)

    def gradient_summary(self) -> str:
        """The mode and the backward of every defence, e.g. ``"auto (jpeg: bpda; noise: exact; EOT x10)"``."""
        parts = [f"{d.name}: {back}" for d, back in zip(self.chain, self.backwards)]
        if self.eot_samples > 1:
            parts.append(f"EOT x{self.eot_samples}")
        return f"{self.gradient_mode} ({'; '.join(parts)})"

    def defense_report(self) -> Dict[str, Any]:
        """The chain and the gradient path of each defence, JSON-ready, for reports."""
        return {
            "spec": self.chain.spec,
            "gradient": self.gradient_mode,
            "eot_samples": self.eot_samples,
            "summary": self.gradient_summary(),
            "defenses": [
                {"name": d.name, "spec": d.spec, "declared": d.gradient, "backward": back,
                 "randomized": d.randomized, "differentiable": d.differentiable}
                for d, back in zip(self.chain, self.backwards)
            ],
        }

    def describe(self) -> str:
        """One line: the model, the defences and the gradient path."""
        inner = self.model.describe() if hasattr(self.model, "describe") else type(self.model).__name__
        return f"{inner} | defence {self.chain.spec} | gradient {self.gradient_summary()}"

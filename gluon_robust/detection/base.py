"""The detector contract: fit on clean data, score, calibrate to a false-positive rate, evaluate.

A detector maps inputs to a per-sample score where **higher means more
suspicious**. Like an attack, it never holds the classifier: every call that
needs it takes ``model`` (a :class:`~gluon_robust.model.Classifier`) first.

* :meth:`Detector.fit` learns whatever the detector needs from clean data
  (statistics, an autoencoder, a binary classifier); stateless detectors skip it.
* :meth:`Detector.score` scores a NumPy batch; :meth:`Detector.score_nd` is the
  same score on an ``NDArray``, recorded by autograd, so that an adaptive
  attack can differentiate it (exactly, or by BPDA where a step is not
  differentiable; see :mod:`gluon_robust.detection.adaptive`).
* :meth:`Detector.calibrate` sets the threshold to the ``(1 - fpr)`` quantile
  of scores of *held-out* clean inputs; an input is flagged when its score is
  strictly above the threshold.
* :meth:`Detector.evaluate` reports the true-positive rate at that threshold,
  the false-positive rate it actually has, and the exact ROC-AUC.

Fitted state (arrays, network weights, the threshold) is saved to one ``.npz``
file with :meth:`Detector.save` (atomically) and restored with :func:`load_detector`.
"""

from __future__ import annotations

import abc
import json
import logging
import os
from typing import Any, ClassVar, Dict, Optional, Tuple, Union

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from ..data.sources import DataSource
from ..errors import ConfigError, DataError
from ..integrity import load_npz
from ..io import atomic_save_npz
from ..registry import parse_value
from ..validation import check_probability

__all__ = [
    "Detector", "CleanData", "roc_auc", "threshold_at_fpr", "evaluate_scores", "clean_arrays",
    "read_detector_file", "parse_spec", "move_to",
]

logger = logging.getLogger(__name__)

#: What :meth:`Detector.fit` accepts: a data source, images, or images and labels.
CleanData = Union[DataSource, np.ndarray, Tuple[np.ndarray, np.ndarray]]

_META_KEY = "__detector__"
_STATE_PREFIX = "state/"
_NET_PREFIX = "net/"


# ------------------------------------------------------------------ validation
def parse_spec(spec: str, what: str = "detector") -> Tuple[str, Dict[str, Any]]:
    """Split ``NAME[:key=value,...]`` into the name and typed options (see :func:`parse_value`)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{what} spec must be NAME[:key=value,...], got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    options: Dict[str, Any] = {}
    for item in (part for part in rest.split(",") if part.strip()):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} option must be key=value, got {item!r} in {spec!r}")
        options[key.strip().replace("-", "_")] = parse_value(value)
    return name.strip().lower(), options


def move_to(net: gluon.Block, ctx: mx.Context) -> None:
    """Move ``net``'s parameters to ``ctx`` when they live elsewhere."""
    params = net.collect_params()
    first = next(iter(params.values()), None)
    if first is not None and first.list_ctx()[0] != ctx:
        params.reset_ctx(ctx)


# ------------------------------------------------------------------ statistics
def _as_scores(name: str, scores: Any) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise DataError(f"{name} scores are empty")
    if not np.isfinite(arr).all():
        raise DataError(f"{name} scores contain NaN or infinite values")
    return arr


def threshold_at_fpr(clean_scores: Any, fpr: float) -> float:
    """The ``(1 - fpr)`` quantile of clean scores (linear interpolation).

    Flagging ``score > threshold`` then flags a fraction ``fpr`` of the clean
    scores it was computed on (up to one sample, and up to ties), and, for
    held-out clean data from the same distribution, ``fpr`` within sampling
    error ``sqrt(fpr (1 - fpr) / n)``.
    """
    scores = _as_scores("clean", clean_scores)
    return float(np.quantile(scores, 1.0 - check_probability("fpr", fpr)))


def roc_auc(clean_scores: Any, adversarial_scores: Any) -> float:
    """Exact ROC-AUC of separating adversarial (positive) from clean (negative) scores.

    Computed as the Mann-Whitney rank statistic: the probability that a random
    adversarial score exceeds a random clean one, ties counting one half
    (Hanley & McNeil 1982). ``O((n + m) log(n + m))``, no approximation.
    """
    neg = _as_scores("clean", clean_scores)
    pos = _as_scores("adversarial", adversarial_scores)
    both = np.concatenate([neg, pos])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size, dtype=np.float64)
    sorted_values = both[order]
    # Average ranks over ties: each run of equal values gets the mean of its 1-based positions.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], both.size]
    run_rank = (starts + 1 + ends) / 2.0
    ranks[order] = np.repeat(run_rank, ends - starts)
    rank_sum = ranks[neg.size :].sum()
    u = rank_sum - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def evaluate_scores(clean_scores: Any, adversarial_scores: Any, threshold: float) -> Dict[str, float]:
    """Detection rates at ``threshold`` (flag when ``score > threshold``) and the ROC-AUC.

    Returns
    -------
    dict
        ``tpr_at_fpr`` (fraction of adversarial inputs flagged), ``fpr``
        (fraction of clean inputs flagged), ``roc_auc``, ``threshold``,
        ``n_clean`` and ``n_adversarial``.
    """
    neg = _as_scores("clean", clean_scores)
    pos = _as_scores("adversarial", adversarial_scores)
    return {
        "tpr_at_fpr": float(np.mean(pos > threshold)),
        "fpr": float(np.mean(neg > threshold)),
        "roc_auc": roc_auc(neg, pos),
        "threshold": float(threshold),
        "n_clean": int(neg.size),
        "n_adversarial": int(pos.size),
    }


# ------------------------------------------------------------------ data
def clean_arrays(model: Any, clean: CleanData, *, limit: Optional[int] = None, batch_size: int = 256
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Images and labels from what :meth:`Detector.fit` accepts.

    A bare image array is labelled with the model's own predictions.
    """
    if isinstance(clean, DataSource):
        source = clean if limit is None or limit >= len(clean) else clean.subset(slice(0, limit))
        x, y = source.arrays()
    elif isinstance(clean, tuple):
        if len(clean) != 2:
            raise DataError(f"clean data must be (images, labels), got a tuple of {len(clean)}")
        x, y = np.asarray(clean[0], dtype=np.float32), np.asarray(clean[1]).astype(np.int64)
        if len(y) != len(x):
            raise DataError(f"clean data has {len(x)} images but {len(y)} labels")
    elif isinstance(clean, np.ndarray):
        x, y = np.asarray(clean, dtype=np.float32), None
    else:
        raise DataError(f"clean data must be a DataSource, an image array or (images, labels), got {type(clean).__name__}")
    if limit is not None:
        x = x[:limit]
        y = None if y is None else y[:limit]
    if x.ndim != 4 or len(x) == 0:
        raise DataError(f"clean images must be a non-empty (N, C, H, W) batch, got shape {x.shape}")
    if y is None:
        y = model.predict(x, batch_size=batch_size).argmax(axis=1).astype(np.int64)
    return x, y


# ------------------------------------------------------------------ detector
class Detector(abc.ABC):
    """Base class of every adversarial-example detector.

    Subclasses set :attr:`name`, implement :meth:`score_nd` and, when they
    learn from data, :meth:`_fit`, :meth:`_state` and :meth:`_load_state`.

    Attributes
    ----------
    threshold : float or None
        Flag inputs whose score is above it; set by :meth:`calibrate`.
    fpr : float or None
        The target false-positive rate the threshold was calibrated for.
    fitted : bool
        Whether :meth:`fit` has run (always True for detectors that learn nothing).
    """

    #: Registry name, set by subclasses.
    name: ClassVar[str] = "detector"
    #: Whether :meth:`fit` learns anything (state saved by :meth:`save`).
    trainable: ClassVar[bool] = False
    #: How gradients pass through :meth:`score_nd`: ``"exact"`` or ``"bpda"``.
    gradient: ClassVar[str] = "exact"

    def __init__(self) -> None:
        self.threshold: Optional[float] = None
        self.fpr: Optional[float] = None
        self.clean_scale: Optional[float] = None
        self.fitted = not self.trainable

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(self.config().items()))
        return f"{type(self).__name__}({params})"

    # ------------------------------------------------------------- hooks
    def config(self) -> Dict[str, Any]:
        """The constructor hyperparameters, JSON-serialisable (saved with the state)."""
        return {}

    def _fit(self, model: Any, x: np.ndarray, y: np.ndarray) -> None:
        """Learn from clean images ``x`` with labels ``y``; nothing by default."""

    def _state(self) -> Dict[str, np.ndarray]:
        """Fitted arrays to save."""
        return {}

    def _load_state(self, state: Dict[str, np.ndarray]) -> None:
        """Restore :meth:`_state`."""

    def networks(self) -> Dict[str, gluon.Block]:
        """Gluon networks the detector owns, saved and restored by name."""
        return {}

    @abc.abstractmethod
    def score_nd(self, model: Any, x: nd.NDArray, logits: Optional[nd.NDArray] = None) -> nd.NDArray:
        """Scores of a batch as an ``(N,)`` NDArray, differentiable under ``autograd.record``.

        Parameters
        ----------
        model : Classifier
            The classifier being protected.
        x : NDArray
            Inputs ``(N, C, H, W)`` in pixel space, on ``model.ctx``.
        logits : NDArray, optional
            ``model(x)`` when the caller has it already (saves a forward pass).
        """

    # ------------------------------------------------------------- public
    def fit(self, model: Any, clean: CleanData, *, limit: Optional[int] = None) -> "Detector":
        """Learn from clean data (a DataSource, an image array or ``(images, labels)``); returns self."""
        if self.trainable:
            x, y = clean_arrays(model, clean, limit=limit)
            logger.info("fitting detector %s on %d clean inputs", self.name, len(x))
            self._fit(model, x, y)
            self.fitted = True
        return self

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ConfigError(f"detector {self.name} is not fitted: call fit(model, clean_data) or load saved params")

    def score(self, model: Any, x: Union[np.ndarray, nd.NDArray], *, batch_size: int = 256) -> np.ndarray:
        """Scores of a batch (higher = more suspicious), float64 ``(N,)``, computed in eval mode."""
        self._require_fitted()
        x_np = x.asnumpy() if isinstance(x, nd.NDArray) else np.asarray(x)
        if x_np.ndim != 4:
            raise DataError(f"inputs must be a (N, C, H, W) batch, got shape {x_np.shape}")
        ctx = getattr(model, "ctx", mx.cpu())
        out = []
        with autograd.pause(train_mode=False):
            for start in range(0, len(x_np), batch_size):
                chunk = nd.array(x_np[start : start + batch_size], ctx=ctx, dtype="float32")
                out.append(self.score_nd(model, chunk).asnumpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros(0, np.float64)

    def calibrate(self, clean_scores: Any, fpr: float) -> float:
        """Set :attr:`threshold` to the ``(1 - fpr)`` quantile of held-out clean scores; returns it.

        Also records the spread of the clean scores (:attr:`clean_scale`, the
        interquartile range or, where it is zero, the standard deviation), used
        by adaptive attacks to put the score on the scale of logits.
        """
        scores = _as_scores("clean", clean_scores)
        self.fpr = check_probability("fpr", fpr)
        self.threshold = threshold_at_fpr(scores, self.fpr)
        q25, q75 = np.quantile(scores, [0.25, 0.75])
        scale = float(q75 - q25) or float(scores.std())
        self.clean_scale = scale if scale > 0 else 1.0
        logger.info("detector %s: threshold %.6g for FPR %.3f on %d clean inputs", self.name, self.threshold,
                    self.fpr, scores.size)
        return self.threshold

    def _require_calibrated(self) -> float:
        if self.threshold is None:
            raise ConfigError(f"detector {self.name} is not calibrated: call calibrate(clean_scores, fpr) first")
        return self.threshold

    def is_flagged(self, scores: Any) -> np.ndarray:
        """``scores > threshold`` as a bool array."""
        return np.asarray(scores, dtype=np.float64) > self._require_calibrated()

    def flag(self, model: Any, x: Union[np.ndarray, nd.NDArray], *, batch_size: int = 256) -> np.ndarray:
        """Whether each input is flagged as adversarial (bool ``(N,)``)."""
        threshold = self._require_calibrated()
        return self.score(model, x, batch_size=batch_size) > threshold

    def evaluate(self, model: Any, clean: np.ndarray, adversarial: np.ndarray, *, batch_size: int = 256
                 ) -> Dict[str, float]:
        """TPR at the calibrated threshold, the FPR it has on ``clean``, and ROC-AUC; see :func:`evaluate_scores`."""
        threshold = self._require_calibrated()
        return evaluate_scores(self.score(model, clean, batch_size=batch_size),
                               self.score(model, adversarial, batch_size=batch_size), threshold)

    # ------------------------------------------------------------- persistence
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the configuration, fitted state, network weights and threshold to ``path`` (.npz), atomically."""
        self._require_fitted()
        meta = {
            "name": self.name, "config": self.config(), "threshold": self.threshold, "fpr": self.fpr,
            "clean_scale": self.clean_scale,
        }
        arrays: Dict[str, np.ndarray] = {_META_KEY: np.array(json.dumps(meta))}
        for key, value in self._state().items():
            arrays[_STATE_PREFIX + key] = np.asarray(value)
        for net_name, net in self.networks().items():
            for key, param in net._collect_params_with_prefix().items():
                arrays[f"{_NET_PREFIX}{net_name}/{key}"] = param.data().asnumpy()
        atomic_save_npz(path, **arrays)

    def restore(self, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> None:
        """Restore what :meth:`save` wrote (used by :func:`load_detector`)."""
        self._load_state({k[len(_STATE_PREFIX):]: v for k, v in arrays.items() if k.startswith(_STATE_PREFIX)})
        for net_name, net in self.networks().items():
            params = net._collect_params_with_prefix()
            prefix = f"{_NET_PREFIX}{net_name}/"
            saved = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            if set(saved) != set(params):
                raise DataError(f"saved detector network {net_name} does not match: missing "
                                f"{sorted(set(params) - set(saved))[:3]}, unexpected {sorted(set(saved) - set(params))[:3]}")
            for key, param in params.items():
                if tuple(param.shape) != tuple(saved[key].shape):
                    raise DataError(f"saved detector parameter {key} has shape {saved[key].shape}, "
                                    f"expected {param.shape}")
                param.set_data(nd.array(saved[key], ctx=param.list_ctx()[0], dtype=param.dtype))
        self.threshold = meta.get("threshold")
        self.fpr = meta.get("fpr")
        self.clean_scale = meta.get("clean_scale")
        self.fitted = True


def read_detector_file(path: Union[str, os.PathLike]) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """The metadata and arrays of a file written by :meth:`Detector.save`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"detector params file not found: {path}")
    arrays = load_npz(path, "detector params", DataError, fix="fit the detector again with gluon-robust detect")
    if _META_KEY not in arrays:
        raise DataError(f"{path} is not a detector params file (no {_META_KEY} entry)")
    try:
        meta = json.loads(str(arrays.pop(_META_KEY)))
    except json.JSONDecodeError:
        raise DataError(f"{path}: corrupt detector metadata") from None
    return meta, arrays

"""Randomized smoothing with a certified L2 radius.

Cohen, Rosenfeld & Kolter (2019), "Certified Adversarial Robustness via
Randomized Smoothing", ICML, https://arxiv.org/abs/1902.02918.

The smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``,
is robust around ``x`` within the L2 radius ``sigma * Phi^-1(pA)`` whenever the
top class has probability ``pA > 1/2`` under the noise. ``pA`` is estimated by
Monte Carlo sampling:

* :meth:`SmoothedClassifier.predict` counts the base classifier's labels on
  ``n`` noisy copies and returns the top class only when a two-sided binomial
  test says it beats the runner-up at level ``alpha``; otherwise it abstains
  (:data:`ABSTAIN`). The probability of returning a class other than ``g(x)``
  is at most ``alpha``.
* :meth:`SmoothedClassifier.certify` picks the top class from ``n0``
  selection samples, then bounds its probability from below with a one-sided
  Clopper-Pearson bound on ``n`` fresh estimation samples and returns the
  radius ``sigma * Phi^-1(pA_lower)`` (or abstains if ``pA_lower < 1/2``). With
  probability at least ``1 - alpha`` over the sampling, a returned class is
  ``g(x)`` and ``g`` is constant on the L2 ball of the returned radius.

Gradients: ``g`` is piecewise constant, so attacks go through
:meth:`SmoothedClassifier.attack_view`, the Monte Carlo *soft* smoothed
classifier ``log E_e[softmax(f(x + e))]`` with fresh noise on every forward
(Expectation over Transformation; the SmoothAdv objective of Salman et al.
2019, "Provably Robust Deep Learning via Adversarially Trained Smoothed
Classifiers", https://arxiv.org/abs/1906.04584).

Noise is drawn in batches on the model's context with MXNet's generator,
seeded per point from ``(seed, purpose, the point's bytes)``: a point gets the
same draws alone or in any batch, and a seed (with the same ``batch_size``,
which sets the shapes MXNet samples in) reproduces a run exactly. The
selection, estimation and prediction draws of a point are independent streams.
Seeding *resets* MXNet's generator of that context (MXNet has no way to save
and restore it).
"""

from __future__ import annotations

import logging
import zlib
from typing import Tuple, Union

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from scipy.stats import norm
from tqdm import tqdm

from ..errors import ConfigError, DataError
from ..model import predict_in_chunks
from ..validation import check_int, check_positive, check_sample_count
from .certification import ABSTAIN, Certification, _check_alpha, certified_accuracy, clopper_pearson_lower, decide

__all__ = [
    "ABSTAIN", "SmoothedClassifier", "Certification", "SoftSmoothed", "clopper_pearson_lower", "certified_accuracy",
    "decide", "SELECTION", "ESTIMATION", "PREDICTION",
]

logger = logging.getLogger(__name__)


#: Purposes of the per-point noise streams (independent of one another), for :meth:`SmoothedClassifier.sample_counts`.
SELECTION, ESTIMATION, PREDICTION = 0, 1, 2

ArrayLike = Union[np.ndarray, nd.NDArray]

#: Counts held in float32 on the device are flushed to int64 before they could pass 2**24 (exact integers).
_EXACT_FLOAT32 = 2 ** 24


class SmoothedClassifier:
    """Gaussian randomized smoothing of a base classifier (Cohen et al. 2019).

    Parameters
    ----------
    model : Classifier
        The base classifier on pixel inputs (anything with ``ctx``,
        ``num_classes`` and ``bounds`` that maps a batch to logits), ideally
        trained with Gaussian noise of the same ``sigma``
        (:class:`~gluon_robust.training.gaussian_augmentation.GaussianAugmentation`).
    sigma : float
        Standard deviation of the noise, in pixel units (> 0).
    batch_size : int
        Noisy copies evaluated per forward pass.
    clip : bool
        Clip ``x + e`` to ``model.bounds`` before the base classifier. The
        certificate holds either way (it is then the certificate of the base
        classifier composed with clipping); Cohen et al. do not clip (default).
    seed : int
        Seed of every noise draw.

    Attributes
    ----------
    gradient : str
        ``"eot"``: attacks differentiate :meth:`attack_view`.

    Examples
    --------
    >>> smoothed = SmoothedClassifier(load_classifier("mnist_resnet20"), sigma=0.25)
    >>> labels = smoothed.predict(x, n=100, alpha=0.001)              # -1 = abstain
    >>> cert = smoothed.certify(x, n0=100, n=1000, alpha=0.001)
    >>> certified_accuracy(cert.predictions, cert.radii, y, [0.0, 0.5])
    """

    gradient = "eot"

    def __init__(
        self, model: gluon.Block, *, sigma: float, batch_size: int = 1000, clip: bool = False, seed: int = 0
    ) -> None:
        for attribute in ("ctx", "num_classes", "bounds"):
            if not hasattr(model, attribute):
                raise ConfigError(f"the base model must have {attribute} (use load_classifier); "
                                  f"got a {type(model).__name__}")
        self.model = model
        self.sigma = check_positive("sigma", sigma)
        self.batch_size = check_int("batch_size", batch_size)
        if not isinstance(clip, (bool, np.bool_)):
            raise ConfigError(f"clip must be True or False, got {clip!r}")
        self.clip = bool(clip)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)

    def __repr__(self) -> str:
        return (f"SmoothedClassifier(sigma={self.sigma!r}, batch_size={self.batch_size}, clip={self.clip}, "
                f"seed={self.seed}, model={getattr(self.model, 'arch', type(self.model).__name__)!r})")

    @property
    def ctx(self) -> mx.Context:
        return self.model.ctx

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def bounds(self) -> Tuple[float, float]:
        return tuple(self.model.bounds)  # type: ignore[return-value]

    # ----------------------------------------------------------- sampling
    def _point_seed(self, point: np.ndarray, purpose: int) -> int:
        digest = zlib.crc32(np.ascontiguousarray(point, dtype=np.float32).tobytes())
        return int(np.random.SeedSequence([self.seed, purpose, digest]).generate_state(1)[0] % (2 ** 31 - 1))

    def sample_counts(self, point: np.ndarray, num: int, purpose: int = ESTIMATION) -> np.ndarray:
        """How often the base classifier picks each class on ``num`` noisy copies of one point.

        Parameters
        ----------
        point : numpy.ndarray
            One input (C, H, W) in pixel units.
        num : int
            Number of noisy copies.
        purpose : int
            Which independent noise stream of the point to draw from.

        Returns
        -------
        numpy.ndarray of int64, shape (num_classes,)
        """
        num = check_sample_count("num", num)
        mx.random.seed(self._point_seed(point, purpose), ctx=self.ctx)
        base = nd.array(point[None], ctx=self.ctx, dtype="float32")
        low, high = self.bounds
        total = np.zeros(self.num_classes, np.int64)
        counts = nd.zeros((self.num_classes,), ctx=self.ctx, dtype="float32")
        pending = 0  # samples counted on the device since the last flush; float32 counts are exact below 2**24
        remaining = num
        with autograd.pause(train_mode=False):
            while remaining > 0:
                size = min(self.batch_size, remaining)
                noisy = nd.broadcast_to(base, (size,) + base.shape[1:]) + nd.random.normal(
                    0.0, self.sigma, shape=(size,) + base.shape[1:], ctx=self.ctx, dtype="float32")
                if self.clip:
                    noisy = nd.clip(noisy, low, high)
                labels = self.model(noisy).argmax(axis=1)
                counts = counts + nd.one_hot(labels, self.num_classes).sum(axis=0)
                remaining -= size
                pending += size
                if pending + self.batch_size > _EXACT_FLOAT32 or remaining == 0:
                    total += counts.asnumpy().round().astype(np.int64)
                    counts, pending = nd.zeros_like(counts), 0
        return total

    # ----------------------------------------------------------- inference
    def predict(self, x: ArrayLike, *, n: int = 100, alpha: float = 0.001, progress: bool = False) -> np.ndarray:
        """The smoothed prediction with abstention (Cohen et al. 2019, Algorithm PREDICT).

        Parameters
        ----------
        x : numpy.ndarray or NDArray
            Inputs (N, C, H, W).
        n : int
            Noisy copies per point.
        alpha : float
            Level of the two-sided binomial test of the top two counts; the
            probability of returning a class other than ``g(x)`` is at most ``alpha``.
        progress : bool
            Show a tqdm bar over the points.

        Returns
        -------
        numpy.ndarray of int64, shape (N,)
            Class labels, :data:`ABSTAIN` where the test does not separate the top two classes.
        """
        n = check_sample_count("n", n)
        alpha = _check_alpha(alpha)
        points = self._points(x)
        out = np.full(len(points), ABSTAIN, np.int64)
        for i in tqdm(range(len(points)), desc="smoothed predict", disable=not progress, leave=False):
            out[i] = decide(self.sample_counts(points[i], n, PREDICTION), alpha)
        return out

    def certify(
        self, x: ArrayLike, *, n0: int = 100, n: int = 1000, alpha: float = 0.001, progress: bool = False
    ) -> Certification:
        """Certified predictions and L2 radii (Cohen et al. 2019, Algorithm CERTIFY).

        Parameters
        ----------
        x : numpy.ndarray or NDArray
            Inputs (N, C, H, W).
        n0 : int
            Selection samples: the top class among them is the candidate.
        n : int
            Estimation samples (fresh) for the lower bound on its probability.
        alpha : float
            Failure probability of the certificate.
        progress : bool
            Show a tqdm bar over the points.

        Returns
        -------
        Certification
            Radius ``sigma * Phi^-1(pA_lower)``; abstains where ``pA_lower < 1/2``.
        """
        n0 = check_sample_count("n0", n0)
        n = check_sample_count("n", n)
        alpha = _check_alpha(alpha)
        points = self._points(x)
        m = len(points)
        predictions = np.full(m, ABSTAIN, np.int64)
        radii = np.zeros(m, np.float64)
        p_lower = np.zeros(m, np.float64)
        counts = np.zeros(m, np.int64)
        selected = np.zeros(m, np.int64)
        for i in tqdm(range(m), desc="certify", disable=not progress, leave=False):
            selected[i] = int(np.argmax(self.sample_counts(points[i], n0, SELECTION)))
            counts[i] = self.sample_counts(points[i], n, ESTIMATION)[selected[i]]
            p_lower[i] = float(clopper_pearson_lower(counts[i], n, alpha))
            if p_lower[i] >= 0.5:
                predictions[i] = selected[i]
                radii[i] = self.sigma * float(norm.ppf(p_lower[i]))
        return Certification(predictions=predictions, radii=radii, p_lower=p_lower, counts=counts, selected=selected)

    def attack_view(self, *, samples: int = 8) -> "SoftSmoothed":
        """The differentiable Monte Carlo soft smoothed classifier to attack (EOT); see :class:`SoftSmoothed`."""
        return SoftSmoothed(self.model, sigma=self.sigma, samples=samples, clip=self.clip)

    def _points(self, x: ArrayLike) -> np.ndarray:
        arr = x.asnumpy() if isinstance(x, nd.NDArray) else np.asarray(x)
        if arr.ndim < 2 or len(arr) == 0:
            raise DataError(f"inputs must be a non-empty batch (N, C, H, W), got shape {arr.shape}")
        size = getattr(self.model, "input_size", None)
        if size is not None and tuple(arr.shape[1:]) != tuple(size):
            raise DataError(f"inputs have shape {tuple(arr.shape[1:])} but the model expects {tuple(size)}")
        if not np.isfinite(arr).all():
            raise DataError("inputs contain NaN or infinite values")
        return arr.astype(np.float32, copy=False)


class SoftSmoothed(gluon.Block):
    """Log-probabilities of the Monte Carlo soft smoothed classifier, for attacks (EOT).

    ``forward(x) = log( (1/k) sum_j softmax(f(x + e_j)) )`` with ``k = samples``
    fresh draws ``e_j ~ N(0, sigma^2 I)`` on every call, so that a gradient
    attack with ``eot_samples`` averages ``samples * eot_samples`` noise
    draws per step. Cross-entropy on these log-probabilities is the SmoothAdv
    objective (Salman et al. 2019, https://arxiv.org/abs/1906.04584). It
    looks like a :class:`~gluon_robust.model.Classifier` to attacks
    (``bounds``, ``num_classes``, ``ctx``, ``input_size``, ``mode_free``,
    :meth:`predict`, :meth:`describe`); its outputs are random.

    Parameters
    ----------
    model : Classifier
        The base classifier.
    sigma : float
        Noise standard deviation.
    samples : int
        Noise draws averaged per forward.
    clip : bool
        Clip ``x + e`` to the bounds, as the smoothed classifier does.
    """

    gradient = "eot"

    def __init__(self, model: gluon.Block, *, sigma: float, samples: int = 8, clip: bool = False) -> None:
        super().__init__()
        self.sigma = check_positive("sigma", sigma)
        self.samples = check_int("samples", samples)
        self.clip = bool(clip)
        with self.name_scope():
            self.base = model
        self.bounds = tuple(model.bounds)
        self.num_classes = int(model.num_classes)
        self.ctx = model.ctx
        self.input_size = getattr(model, "input_size", None)
        self.folded = bool(getattr(model, "folded", False))
        self.mode_free = bool(getattr(model, "mode_free", False))
        self.arch = f"soft-smoothed(sigma={self.sigma:g}, samples={self.samples}) {getattr(model, 'arch', '')}".rstrip()

    def forward(self, x: nd.NDArray) -> nd.NDArray:  # noqa: D102 (documented on the class)
        k, n = self.samples, x.shape[0]
        tiled = nd.tile(x, reps=(k,) + (1,) * (x.ndim - 1))
        noisy = tiled + nd.random.normal(0.0, self.sigma, shape=tiled.shape, ctx=x.context, dtype="float32")
        if self.clip:
            noisy = nd.clip(noisy, *self.bounds)
        logp = nd.log_softmax(self.base(noisy), axis=1).reshape((k, n, -1))
        top = nd.max(logp, axis=0).detach()  # log-mean-exp, stable; the shift cancels in the gradient
        return top + nd.log(nd.mean(nd.exp(nd.broadcast_sub(logp, top.expand_dims(0))), axis=0))

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Log-probabilities for a NumPy batch (one random draw), in chunks of ``batch_size``."""
        return predict_in_chunks(self, x, self.ctx, self.num_classes, batch_size)

    def describe(self) -> str:
        """One line saying what this view is."""
        inner = self.base.describe() if hasattr(self.base, "describe") else type(self.base).__name__
        return f"soft smoothed (sigma {self.sigma:g}, {self.samples} draws per forward, EOT) of {inner}"



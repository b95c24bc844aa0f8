"""Mahalanobis distance to class-conditional Gaussians on penultimate-layer features.

Lee, Lee, Lee & Shin (2018), "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS,
https://arxiv.org/abs/1807.03888.

Fit: the features ``f(x)`` of the layer before the classifier's last dense
layer are modelled, per class ``c``, as a Gaussian with mean ``mu_c`` and one
covariance ``Sigma`` shared by all classes (tied, as in linear discriminant
analysis). Score: the distance to the closest class,
``min_c (f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c)``. This implementation uses
the penultimate layer only and no input pre-processing (the paper's "noise
magnitude" and layer ensemble are refinements on top).

The features are read from the classifier's own graph: the symbol of
``model.net`` (a folded ``SymbolBlock`` for models from
:func:`~gluon_robust.model.load_classifier`) is cut at the data input of its
last ``FullyConnected`` node, so the score is exactly differentiable.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from ..errors import DataError, ModelError
from ..folding import block_to_symbol, symbol_block
from ..validation import check_positive
from .base import Detector

__all__ = ["MahalanobisDetector", "GaussianClassModel", "penultimate_features"]

logger = logging.getLogger(__name__)


class _FeatureBlock(gluon.HybridBlock):
    """Pixel inputs -> normalisation of the classifier -> features of an inner layer, flattened."""

    def __init__(self, body: gluon.HybridBlock, mean: np.ndarray, std: np.ndarray, ctx: mx.Context) -> None:
        super().__init__()
        with self.name_scope():
            self.body = body
            self.mean = self.params.get_constant("mean", mean)
            self.std = self.params.get_constant("std", std)
        self.mean.initialize(ctx=ctx)
        self.std.initialize(ctx=ctx)

    def hybrid_forward(self, F: Any, x: Any, mean: Any, std: Any) -> Any:  # noqa: N803 (Gluon's signature)
        return F.flatten(self.body(F.broadcast_div(F.broadcast_sub(x, mean), std)))


def penultimate_features(model: Any, layer: Optional[str] = None) -> gluon.HybridBlock:
    """A frozen, hybridised block mapping pixel inputs to ``model``'s penultimate features ``(N, D)``.

    Parameters
    ----------
    model : Classifier
        Has ``net`` (a HybridBlock), ``mean``, ``std`` and ``ctx``.
    layer : str, optional
        Name of an internal output of the graph (``net``'s symbol, e.g.
        ``"cifarresnetv10_pool0_fwd_output"``) to use instead of the data
        input of the last ``FullyConnected`` layer.

    Raises
    ------
    ModelError
        When the graph has no dense layer (and no ``layer`` is given) or ``layer`` does not exist.
    """
    symbol, params = block_to_symbol(model.net, input_name="data")
    internals = symbol.get_internals()
    names = internals.list_outputs()
    if layer is None:
        graph = json.loads(symbol.tojson())
        nodes = graph["nodes"]
        dense = [i for i, node in enumerate(nodes) if node["op"] == "FullyConnected"]
        if not dense:
            raise ModelError("the classifier has no dense layer to take penultimate features from; pass layer=NAME")
        src_id, src_out = nodes[dense[-1]]["inputs"][0][:2]
        src = nodes[src_id]
        layer = src["name"] if src["op"] == "null" else f"{src['name']}_output" + (str(src_out) if src_out else "")
    if layer not in names:
        close = [n for n in names if n.endswith("_output")][-5:]
        raise ModelError(f"layer {layer!r} is not an output of the classifier's graph; e.g. {', '.join(close)}")
    feature_symbol = internals[layer]
    wanted = set(feature_symbol.list_arguments()) | set(feature_symbol.list_auxiliary_states())
    body = symbol_block(feature_symbol, {k: v for k, v in params.items() if k in wanted}, model.ctx,
                        input_name="data", hybridize=False)
    block = _FeatureBlock(body, model.mean.data().asnumpy(), model.std.data().asnumpy(), model.ctx)
    block.hybridize(static_alloc=True)
    return block


class GaussianClassModel:
    """Class-conditional Gaussians with a tied covariance, and the Mahalanobis distance to the closest mean.

    Parameters
    ----------
    ridge : float
        Added to the covariance diagonal, relative to its mean diagonal, before inversion.
    """

    def __init__(self, *, ridge: float = 1e-6) -> None:
        self.ridge = check_positive("ridge", ridge, allow_zero=True)
        self.means: Optional[np.ndarray] = None
        self.precision: Optional[np.ndarray] = None

    def fit(self, features: np.ndarray, labels: np.ndarray) -> "GaussianClassModel":
        """Estimate the per-class means and the tied covariance (maximum likelihood)."""
        features = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels).astype(np.int64)
        if features.ndim != 2 or len(features) != len(labels):
            raise DataError(f"features must be (N, D) with N labels, got {features.shape} and {labels.shape}")
        classes = np.unique(labels)
        if len(classes) < 1:
            raise DataError("no features to fit")
        means = np.stack([features[labels == c].mean(axis=0) for c in classes])
        centred = features - means[np.searchsorted(classes, labels)]
        cov = centred.T @ centred / len(features)
        cov += np.eye(cov.shape[0]) * self.ridge * max(float(np.trace(cov)) / cov.shape[0], 1e-12)
        self.means = means
        self.precision = np.linalg.pinv(cov, hermitian=True)
        return self

    def distances_nd(self, features: nd.NDArray) -> nd.NDArray:
        """Squared Mahalanobis distances ``(N, classes)``, differentiable in ``features``."""
        ctx = features.context
        precision = nd.array(self.precision, ctx=ctx, dtype="float32")
        means = nd.array(self.means, ctx=ctx, dtype="float32")
        projected = nd.dot(features, precision)  # f P
        quad = nd.sum(projected * features, axis=1, keepdims=True)  # f P f
        cross = nd.dot(projected, means, transpose_b=True)  # f P mu_c
        const = nd.sum(nd.dot(means, precision) * means, axis=1).reshape((1, -1))  # mu_c P mu_c
        return nd.relu(quad - 2 * cross + const)

    def score_nd(self, features: nd.NDArray) -> nd.NDArray:
        """Distance to the closest class mean, ``(N,)``."""
        return nd.min(self.distances_nd(features), axis=1)

    def score(self, features: np.ndarray) -> np.ndarray:
        """:meth:`score_nd` on a NumPy array, in float64 (reference computation)."""
        diff = np.asarray(features, np.float64)[:, None, :] - self.means[None]
        return np.einsum("ncd,de,nce->nc", diff, self.precision, diff).min(axis=1)


class MahalanobisDetector(Detector):
    """Lee et al. (2018): Mahalanobis distance of penultimate features to the closest class Gaussian.

    Parameters
    ----------
    layer : str, optional
        Internal graph output to use as features; default the input of the last dense layer.
    ridge : float
        Relative covariance regulariser (default 1e-6).
    use_labels : bool
        Fit the class means on the true labels (default) or on the model's predictions.

    Examples
    --------
    >>> det = MahalanobisDetector().fit(model, load_data("mnist-sample", split="train"))
    >>> det.calibrate(det.score(model, x_clean_heldout), fpr=0.05)
    """

    name = "mahalanobis"
    trainable = True

    def __init__(self, *, layer: Optional[str] = None, ridge: float = 1e-6, use_labels: bool = True) -> None:
        super().__init__()
        self.layer = layer
        self.gaussians = GaussianClassModel(ridge=ridge)
        self.use_labels = bool(use_labels)
        self._extractor: Optional[Tuple[Any, gluon.HybridBlock]] = None

    def config(self) -> dict:
        return {"layer": self.layer, "ridge": self.gaussians.ridge, "use_labels": self.use_labels}

    def features(self, model: Any) -> gluon.HybridBlock:
        """The (cached) feature block of ``model``."""
        if self._extractor is None or self._extractor[0] is not model:
            self._extractor = (model, penultimate_features(model, self.layer))
        return self._extractor[1]

    def _fit(self, model: Any, x: np.ndarray, y: np.ndarray) -> None:
        block = self.features(model)
        feats = np.concatenate([
            block(nd.array(x[i : i + 256], ctx=model.ctx)).asnumpy() for i in range(0, len(x), 256)
        ])
        labels = y if self.use_labels else model.predict(x).argmax(axis=1)
        self.gaussians.fit(feats, labels)
        logger.info("mahalanobis: %d features of dimension %d, %d classes", len(feats), feats.shape[1],
                    len(self.gaussians.means))

    def _state(self) -> Dict[str, np.ndarray]:
        return {"means": self.gaussians.means, "precision": self.gaussians.precision}

    def _load_state(self, state: Dict[str, np.ndarray]) -> None:
        self.gaussians.means = state["means"]
        self.gaussians.precision = state["precision"]

    def score_nd(self, model: Any, x: nd.NDArray, logits: Optional[nd.NDArray] = None) -> nd.NDArray:
        self._require_fitted()
        feats = self.features(model)(x)
        if feats.shape[1] != self.gaussians.means.shape[1]:
            raise DataError(f"the model's features have dimension {feats.shape[1]} but the detector was fitted "
                            f"on dimension {self.gaussians.means.shape[1]}")
        return self.gaussians.score_nd(feats)

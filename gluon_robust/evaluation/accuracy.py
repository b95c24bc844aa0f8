"""Clean accuracy over a streamed data source."""

from __future__ import annotations

from typing import Tuple

import numpy as np
from mxnet import gluon

from ..data import DataSource

__all__ = ["accuracy", "predict_source"]


def predict_source(model: gluon.Block, source: DataSource, batch_size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """Predicted and true labels for every sample of ``source``, one batch in memory at a time."""
    preds, labels = [], []
    for batch in source.batches(batch_size):
        preds.append(model.predict(batch.x, batch_size=batch_size).argmax(axis=1))
        labels.append(batch.y)
    if not preds:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(preds).astype(np.int64), np.concatenate(labels)


def accuracy(model: gluon.Block, source: DataSource, batch_size: int = 256) -> float:
    """Fraction of samples of ``source`` that ``model`` classifies correctly."""
    pred, y = predict_source(model, source, batch_size)
    return float((pred == y).mean()) if len(y) else 0.0

"""A data source labelled by a model's own clean predictions (``--labels predicted``)."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from gluon_robust.data.sources import DataSource

__all__ = ["PredictedLabels"]

logger = logging.getLogger(__name__)


class PredictedLabels(DataSource):
    """Another source's images, each labelled with ``model``'s prediction on it.

    For unlabelled photos: an attack then asks "can this prediction be
    flipped?", and the clean accuracy is 100 % by construction. Predictions
    are made lazily, one batch at a time as the batch is read; no image is
    held beyond its batch.

    Parameters
    ----------
    source : DataSource
        The images (its own labels are ignored).
    model : object
        A classifier with ``predict(x) -> logits`` (:class:`~gluon_robust.model.Classifier`).
    batch_size : int, optional
        Chunk size of the predictions.

    Examples
    --------
    >>> unlabelled = load_data("folder:photos", input_size=224)       # doctest: +SKIP
    >>> source = PredictedLabels(unlabelled, model)                   # doctest: +SKIP
    """

    def __init__(self, source: DataSource, model: Any, batch_size: int = 256) -> None:
        super().__init__(f"{source.name} (labels: predicted)", 0)
        self._source = source
        self._index = source._index.copy()  # noqa: SLF001 -- the same view on the same storage
        self._model = model
        self._batch_size = batch_size

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self._source.sample_shape

    @property
    def classes(self) -> list[str] | None:
        table = getattr(self._model, "class_table", None)
        return list(table.names) if table is not None else None

    def _load(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, _ = self._source._load(index)  # noqa: SLF001
        logits = self._model.predict(x, batch_size=self._batch_size)
        return x, np.asarray(logits).argmax(axis=1).astype(np.int64)

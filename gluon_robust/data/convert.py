"""Turn what a Python user holds -- arrays, NDArrays, a Gluon DataLoader or Dataset -- into a DataSource.

:func:`as_source` is the one conversion the Python API uses, so that
``gluon_robust.evaluate``, ``gluon_robust.attack`` and ``gluon_robust.certify``
accept the same data as the command line's ``--data``:

* ``(x, y)`` NumPy arrays or MXNet NDArrays -> an :class:`ArraySource` (the
  same validation as ``npz:`` files: NCHW, NHWC or NHW; uint8 0-255 or
  float 0-1; integer labels);
* a ``gluon.data.DataLoader`` or ``gluon.data.Dataset`` -> a
  :class:`DatasetSource` that streams: it reads the loader's dataset by index,
  one batch at a time, and never holds the whole dataset in memory;
* a :class:`DataSource` -> itself.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

from gluon_robust.data.sources import ArraySource, DataSource, _as_labels, _as_nchw_images
from gluon_robust.errors import DataError

__all__ = ["as_source", "check_fits", "DatasetSource"]

logger = logging.getLogger(__name__)


def _numpy(value: Any) -> np.ndarray:
    """A NumPy array from a NumPy array, an MXNet NDArray or a scalar."""
    return value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)


def _label_array(value: Any) -> np.ndarray:
    """Labels as NumPy; whole-valued float labels (MXNet's default dtype) become int64."""
    y = _numpy(value)
    if y.dtype.kind == "f" and y.size and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    return y


class DatasetSource(DataSource):
    """A streaming data source over a Gluon ``Dataset`` (or the dataset of a ``DataLoader``).

    Samples are read by index with ``dataset[i]``, which must return
    ``(image, label)``; the dataset's own transforms (``transform_first``...)
    apply. Only one batch of samples is in memory at a time. A DataLoader's
    sampler (shuffling), batchify function and workers are *not* used: the
    samples come in the dataset's order, so that every result can be traced
    to its index and a run is reproducible.

    Images may be NDArrays or NumPy arrays, HWC (Gluon's vision datasets) or
    CHW (after ``transforms.ToTensor``), uint8 0-255 or float 0-1, as for
    :class:`ArraySource`.

    Parameters
    ----------
    dataset : mxnet.gluon.data.Dataset or any sized, indexable sequence
        Yields ``(image, label)`` pairs.
    name : str
        Identifier used in logs, reports and errors.

    Raises
    ------
    DataError
        If the dataset is empty or its first sample is not an ``(image, label)`` pair.
    """

    def __init__(self, dataset: Any, *, name: str = "dataset") -> None:
        try:
            size = len(dataset)
        except TypeError:
            raise DataError(f"{name}: the dataset has no length; pass a Gluon Dataset, a DataLoader over one, "
                            f"or arrays") from None
        if size == 0:
            raise DataError(f"{name}: the dataset is empty")
        super().__init__(name, size)
        self._dataset = dataset
        x, _ = self._load(np.zeros(1, dtype=np.int64))
        self._shape = tuple(int(d) for d in x.shape[1:])

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image (that of the first sample)."""
        return self._shape  # type: ignore[return-value]

    def _load(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for i in index:
            item = self._dataset[int(i)]
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise DataError(f"{self.name}: sample {int(i)} is not an (image, label) pair")
            images.append(_numpy(item[0]))
            labels.append(_label_array(item[1]).reshape(-1)[:1])
        try:
            stacked = np.stack(images)
        except ValueError:
            shapes = sorted({im.shape for im in images})
            raise DataError(f"{self.name}: samples have different shapes {shapes}; resize them to one size "
                            f"in the dataset's transform") from None
        x = _as_nchw_images(stacked, self.name)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if stacked.dtype.kind in "iu":
            x /= 255.0
        y = _as_labels(np.concatenate(labels), len(x), self.name)
        if hasattr(self, "_shape") and tuple(x.shape[1:]) != self._shape:
            raise DataError(f"{self.name}: sample shape {tuple(x.shape[1:])} differs from the first sample's "
                            f"{self._shape}; resize them to one size in the dataset's transform")
        return x, y


def as_source(data: Any, labels: Any = None, *, name: Optional[str] = None) -> DataSource:
    """The :class:`DataSource` for any data the Python API accepts.

    Parameters
    ----------
    data : numpy.ndarray, mxnet.nd.NDArray, tuple, DataLoader, Dataset or DataSource
        Images (with ``labels``), an ``(x, y)`` pair, a ``gluon.data.DataLoader``
        (its dataset is streamed in order, see :class:`DatasetSource`), a Gluon
        ``Dataset`` of ``(image, label)`` pairs, or a :class:`DataSource`
        (returned as it is).
    labels : numpy.ndarray or mxnet.nd.NDArray, optional
        Integer labels ``(N,)``; required with image arrays, refused otherwise.
    name : str, optional
        Identifier for logs and reports (default ``"arrays"``, ``"dataloader"``
        or ``"dataset"``).

    Returns
    -------
    DataSource

    Raises
    ------
    DataError
        For missing or superfluous labels, arrays of the wrong shape, dtype or
        range, or an object that is none of the above.

    Examples
    --------
    >>> source = as_source(x, y)                                   # NumPy or NDArray
    >>> source = as_source(gluon.data.DataLoader(dataset, batch_size=64))
    """
    from mxnet import gluon

    if isinstance(data, DataSource):
        _no_labels(labels, "a DataSource")
        return data
    if isinstance(data, gluon.data.DataLoader):
        _no_labels(labels, "a DataLoader")
        dataset = getattr(data, "_dataset", None)  # Gluon keeps no public handle on it
        if dataset is None:
            raise DataError("the DataLoader has no dataset to read from; pass arrays or a Dataset")
        source = DatasetSource(dataset, name=name or "dataloader")
        logger.info("%s: streaming the loader's dataset in order (%d samples); its sampler and batchify "
                    "function are not used", source.name, len(source))
        return source
    if isinstance(data, gluon.data.Dataset):
        _no_labels(labels, "a Dataset")
        return DatasetSource(data, name=name or "dataset")
    if isinstance(data, tuple) and len(data) == 2 and labels is None:
        data, labels = data
    if hasattr(data, "asnumpy") or isinstance(data, np.ndarray):
        if labels is None:
            raise DataError("images were given without labels: pass as_source(x, y)")
        return ArraySource(_numpy(data), _label_array(labels), name=name or "arrays")
    raise DataError(f"cannot use {type(data).__name__} as data: pass NumPy arrays or NDArrays (x, y), a Gluon "
                    f"DataLoader or Dataset, or a DataSource")


def _no_labels(labels: Any, what: str) -> None:
    if labels is not None:
        raise DataError(f"labels were given with {what}, which holds its own; drop the labels argument")



def check_fits(model: Any, source: DataSource) -> None:
    """Refuse data whose samples are not the shape ``model`` takes, before any work starts.

    Raises
    ------
    DataError
        If ``model.input_size`` is known and differs from ``source.sample_shape``.
    """
    expected = getattr(model, "input_size", None)
    if expected and tuple(source.sample_shape) != tuple(expected):
        raise DataError(f"data {source.name} has samples of shape {tuple(source.sample_shape)} but the model "
                        f"expects {tuple(expected)}; resize the data or load the model with that input size")

"""The data-source interface and its in-memory array implementation.

Every source delivers images in pixel space -- float32, NCHW, values in
``[0, 1]`` -- with int64 labels. Normalisation is the model wrapper's job.
"""
from __future__ import annotations

import abc
import copy
import logging
import os
import zipfile
import zlib
from typing import Iterator, NamedTuple, Sequence, Union

import numpy as np

from gluon_robust.data._utils import is_int, one_line
from gluon_robust.errors import DataError
from gluon_robust.integrity import is_pickle

__all__ = ["Batch", "DataSource", "ArraySource"]

logger = logging.getLogger(__name__)

#: What :meth:`DataSource.subset` accepts: positions in the source, or a slice.
Indices = Union[slice, Sequence[int], np.ndarray]

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"
_NPZ_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


class Batch(NamedTuple):
    """One batch of labelled images.

    Attributes
    ----------
    x : numpy.ndarray
        Images, float32, shape ``(N, C, H, W)``, values in ``[0, 1]``.
    y : numpy.ndarray
        Labels, int64, shape ``(N,)``.
    index : numpy.ndarray
        int64 indices of the samples in the original (un-subsetted) source.
    """

    x: np.ndarray
    y: np.ndarray
    index: np.ndarray


class DataSource(abc.ABC):
    """A sized, streamable labelled image dataset.

    A source is a view on a list of samples of the underlying storage.
    :meth:`subset` narrows the view without copying data, and every
    :class:`Batch` reports the indices of its samples in the original storage,
    so results stay traceable after ``--limit`` or sharding.

    Subclasses implement :attr:`sample_shape` and :meth:`_load`.

    Parameters
    ----------
    name : str
        Human-readable identifier, e.g. ``"mnist-sample:test"`` or
        ``"npz:/data/x.npz"``; used in logs, reports and error messages.
    size : int
        Number of samples in the underlying storage.
    """

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self._index = np.arange(size, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._index.size)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, len={len(self)}, "
                f"sample_shape={self.sample_shape})")

    @property
    @abc.abstractmethod
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image as delivered."""

    @property
    def classes(self) -> list[str] | None:
        """Class names indexed by label, when the source knows them; else None."""
        return None

    @property
    def labels(self) -> np.ndarray | None:
        """The labels of the samples in view, when known without decoding any image; else None."""
        return self._labels(self._index)

    def _labels(self, index: np.ndarray) -> np.ndarray | None:
        """Labels of storage indices ``index``, for sources that hold them apart from the images."""
        return None

    @abc.abstractmethod
    def _load(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Read samples from storage.

        Parameters
        ----------
        index : numpy.ndarray
            Non-empty int64 indices into the underlying storage.

        Returns
        -------
        x : numpy.ndarray
            float32 images ``(len(index), C, H, W)`` in ``[0, 1]``.
        y : numpy.ndarray
            int64 labels ``(len(index),)``.
        """

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Stream the source in order, one batch at a time.

        Only one batch is held in memory at a time; the last batch holds the
        remainder and may be smaller than `batch_size`.

        Parameters
        ----------
        batch_size : int
            Maximum number of samples per batch (at least 1).

        Yields
        ------
        Batch
            The next batch of images, labels and original indices.

        Raises
        ------
        DataError
            If `batch_size` is not a positive integer.
        """
        if not is_int(batch_size) or batch_size < 1:
            raise DataError(f"batch size must be a positive integer, got {batch_size!r}")
        for start in range(0, len(self), batch_size):
            index = self._index[start:start + batch_size].copy()
            x, y = self._load(index)
            yield Batch(x, y, index)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Return all images and labels at once (for small sources).

        Returns
        -------
        x : numpy.ndarray
            float32 images ``(len(self), C, H, W)`` in ``[0, 1]``.
        y : numpy.ndarray
            int64 labels ``(len(self),)``.
        """
        if len(self) == 0:
            return (np.empty((0, *self.sample_shape), dtype=np.float32),
                    np.empty(0, dtype=np.int64))
        return self._load(self._index)

    def subset(self, indices: Indices) -> DataSource:
        """Return a view on some samples of this source, sharing its storage.

        Parameters
        ----------
        indices : slice or sequence of int
            Positions in *this* source (``0 <= i < len(self)``), unique, in the
            order the new source should deliver them. A slice such as
            ``slice(0, 100)`` or ``slice(shard, None, num_shards)`` also works.

        Returns
        -------
        DataSource
            A source of the same type whose batches report the indices of the
            samples in the original storage.

        Raises
        ------
        DataError
            If the indices are not integers, out of range or repeated.
        """
        positions = self._positions(indices)
        view = copy.copy(self)
        view._index = self._index[positions]
        return view

    def _positions(self, indices: Indices) -> np.ndarray:
        """Validate subset indices and return them as an int64 array."""
        if isinstance(indices, slice):
            return np.arange(len(self), dtype=np.int64)[indices]
        positions = np.asarray(indices)
        if positions.size == 0:
            return np.empty(0, dtype=np.int64)
        if positions.ndim != 1 or positions.dtype.kind not in "iu":
            raise DataError(f"{self.name}: subset indices must be a 1-D sequence of integers, "
                            f"got shape {positions.shape} of dtype {positions.dtype}")
        positions = positions.astype(np.int64)
        low, high = int(positions.min()), int(positions.max())
        if low < 0 or high >= len(self):
            bad = low if low < 0 else high
            raise DataError(f"{self.name}: subset index {bad} is out of range for a source "
                            f"of {len(self)} samples")
        if np.unique(positions).size != positions.size:
            raise DataError(f"{self.name}: subset indices contain duplicates")
        return positions


class ArraySource(DataSource):
    """A data source over in-memory image and label arrays.

    uint8 images stay uint8 in memory and are converted to float32 one batch at
    a time.

    Parameters
    ----------
    x : numpy.ndarray
        Images: uint8 (0-255), another integer type with values in 0-255, or
        float with values in ``[0, 1]``. Layout ``NCHW``, ``NHWC`` or ``NHW``
        (grayscale), with 1 or 3 channels.
    y : numpy.ndarray
        Non-negative integer labels, shape ``(N,)``.
    name : str, optional
        Identifier used in logs and error messages.

    Raises
    ------
    DataError
        If the arrays have the wrong shape, dtype or value range.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, name: str = "arrays") -> None:
        images = _as_nchw_images(np.asarray(x), name)
        labels = _as_labels(np.asarray(y), len(images), name)
        super().__init__(name, len(images))
        self._x = images
        self._y = labels

    @classmethod
    def from_npz(cls, path: str | os.PathLike[str], *, x_key: str = "x", y_key: str = "y",
                 name: str | None = None) -> ArraySource:
        """Load images and labels from an ``.npz`` archive.

        Parameters
        ----------
        path : str or os.PathLike
            The archive, as written by :func:`numpy.savez` or
            :func:`numpy.savez_compressed`.
        x_key, y_key : str, optional
            Names of the image and label arrays in the archive. With the
            default ``x_key="x"``, an archive with no ``x`` but an ``x_adv``
            (the ``adversarial.npz`` of ``gluon-robust attack``) is read from ``x_adv``.
        name : str, optional
            Identifier of the source; default ``"npz:<absolute path>"``.

        Returns
        -------
        ArraySource
            The validated data.

        Raises
        ------
        DataError
            If the file is missing or unreadable, lacks a key, or holds
            arrays of the wrong shape, dtype or value range.
        """
        path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        name = name or f"npz:{path}"
        x, y = _read_npz(path, x_key, y_key, name)
        logger.debug("%s: read x %s %s and y %s %s", name, x.shape, x.dtype, y.shape, y.dtype)
        return cls(x, y, name=name)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        channels, height, width = self._x.shape[1:]
        return int(channels), int(height), int(width)

    def _labels(self, index: np.ndarray) -> np.ndarray:
        return self._y[index]

    def _load(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(self._x[index], dtype=np.float32)
        if self._x.dtype == np.uint8:
            x /= 255.0
        return x, self._y[index]


def _read_npz(path: str, x_key: str, y_key: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read two arrays from an ``.npz`` file, turning every failure into DataError."""
    if not os.path.exists(path):
        raise DataError(f"{name}: file not found")
    if not os.path.isfile(path):
        raise DataError(f"{name}: is not a file")
    if is_pickle(path):
        raise DataError(f"{name}: is a Python pickle, which gluon-robust never loads because unpickling can run "
                        f"arbitrary code; save the data with np.savez(path, {x_key}=images, {y_key}=labels)")
    with open(path, "rb") as handle:
        head = handle.read(6)
    if head.startswith(_NPY_MAGIC):
        raise DataError(f"{name}: is a single-array .npy file; save an .npz with "
                        f"np.savez(path, {x_key}=images, {y_key}=labels)")
    if head[:4] not in _ZIP_MAGIC:
        raise DataError(f"{name}: is not an .npz archive (no zip signature at the start)")
    try:
        archive = np.load(path, allow_pickle=False)
    except _NPZ_READ_ERRORS as err:
        raise DataError(f"{name}: corrupt .npz archive ({one_line(err)})") from err
    with archive:
        if x_key == "x" and "x" not in archive.files and "x_adv" in archive.files:
            x_key = "x_adv"  # the adversarial.npz that gluon-robust attack writes
            logger.info("%s: no array 'x'; reading the adversarial images 'x_adv'", name)
        missing = [key for key in (x_key, y_key) if key not in archive.files]
        if missing:
            raise DataError(f"{name}: missing array(s) {', '.join(map(repr, missing))}; "
                            f"the file has {sorted(archive.files)}")
        try:
            return archive[x_key], archive[y_key]
        except ValueError as err:
            if "allow_pickle" not in str(err):
                raise DataError(f"{name}: cannot read arrays {x_key!r} and {y_key!r} ({one_line(err)})") from err
            raise DataError(f"{name}: array {x_key!r} or {y_key!r} is an object array, which only pickle can read "
                            f"(and unpickling can run code); save numeric arrays only") from None
        except _NPZ_READ_ERRORS as err:
            raise DataError(f"{name}: cannot read arrays {x_key!r} and {y_key!r} "
                            f"({one_line(err)})") from err


def _as_nchw_images(x: np.ndarray, name: str) -> np.ndarray:
    """Validate an image array and return it as an NCHW view (uint8 or float)."""
    if x.ndim not in (3, 4):
        raise DataError(f"{name}: images must be 3-D (N, H, W) or 4-D (NCHW or NHWC), "
                        f"got shape {x.shape}")
    if x.size == 0:
        raise DataError(f"{name}: images are empty (shape {x.shape})")
    if x.dtype.kind not in "uif":
        raise DataError(f"{name}: images have non-numeric dtype {x.dtype}; "
                        "expected uint8 (0-255) or float (0-1)")
    x = x[:, np.newaxis] if x.ndim == 3 else _to_nchw(x, name)
    return _check_pixel_range(x, name)


def _to_nchw(x: np.ndarray, name: str) -> np.ndarray:
    """Detect the channel axis of a 4-D array and return an NCHW view."""
    first, last = x.shape[1], x.shape[3]
    if first in (1, 3) and last in (1, 3):
        raise DataError(f"{name}: channel axis is ambiguous in shape {x.shape} "
                        "(both axis 1 and axis 3 could be channels)")
    if first in (1, 3):
        return x
    if last in (1, 3):
        return x.transpose(0, 3, 1, 2)
    raise DataError(f"{name}: images must have 1 or 3 channels (NCHW or NHWC), "
                    f"got shape {x.shape}")


def _check_pixel_range(x: np.ndarray, name: str) -> np.ndarray:
    """Check pixel values against the dtype's range; integers become uint8."""
    if x.dtype == np.uint8:
        return x
    low, high = x.min(), x.max()
    if x.dtype.kind in "iu":
        if low < 0 or high > 255:
            raise DataError(f"{name}: integer images must lie in 0..255, "
                            f"got values from {low} to {high}")
        return x.astype(np.uint8)
    if not (0.0 <= low and high <= 1.0):  # also rejects NaN
        hint = ("; if these are 0-255 pixel values, divide by 255 (or store uint8)"
                if 0.0 <= low and high <= 255.0 else "")
        raise DataError(f"{name}: float images must lie in [0, 1], "
                        f"got values from {low:g} to {high:g}{hint}")
    return x


def _as_labels(y: np.ndarray, count: int, name: str) -> np.ndarray:
    """Validate labels for `count` images and return them as int64."""
    if y.dtype.kind not in "iu":
        raise DataError(f"{name}: labels must be integers, got dtype {y.dtype}")
    if y.shape != (count,):
        raise DataError(f"{name}: labels must have shape ({count},) to match the images, "
                        f"got {y.shape}")
    if y.min() < 0:
        raise DataError(f"{name}: labels must be non-negative, found {y.min()}")
    return y.astype(np.int64)

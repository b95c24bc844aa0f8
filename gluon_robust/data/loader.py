"""Open a data source from a spec string such as ``mnist-sample`` or ``npz:PATH``."""
from __future__ import annotations

import logging
import os

from gluon_robust.data._utils import InputSize, is_int, parse_input_size
from gluon_robust.data.builtin import BUILTIN_DATASETS, load_builtin
from gluon_robust.data.folder import FolderSource
from gluon_robust.data.labels import ClassTable
from gluon_robust.data.mnist_sample import SPLITS, load_mnist_sample
from gluon_robust.data.sources import ArraySource, DataSource
from gluon_robust.errors import DataError

__all__ = ["InputSize", "load_data"]

logger = logging.getLogger(__name__)

_SPEC_FORMS = ("mnist-sample, " + ", ".join(BUILTIN_DATASETS)
               + ", npz:PATH (or a path ending in .npz), folder:PATH (or an existing directory)")


def load_data(spec: str, *, split: str = "test", limit: int | None = None,
              input_size: InputSize | None = None, class_table: ClassTable | None = None,
              num_classes: int | None = None) -> DataSource:
    """Open the data source described by `spec`.

    Parameters
    ----------
    spec : str
        One of:

        - ``mnist-sample``: the bundled 5,000 MNIST digits (see
          :mod:`gluon_robust.data.mnist_sample`);
        - ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``: Gluon's
          built-in datasets, read from Gluon's local cache, never downloaded;
        - ``npz:PATH`` or a path ending in ``.npz``: arrays ``x`` (uint8 0-255
          or float 0-1; NCHW, NHWC or NHW) and ``y`` (integer labels);
        - ``folder:PATH`` or an existing directory: one sub-folder of images
          per class, resized and centre-cropped to `input_size`.
    split : {"train", "test"}, optional
        The split of the bundled and built-in datasets; an ``.npz`` file or a
        folder is a single split, so it is ignored there.
    limit : int, optional
        Keep only the first `limit` samples.
    input_size : int or (int, int), optional
        Image ``(height, width)``, or one int for square images. Folders are
        cropped to it (default 224); array data must already have it, since
        arrays are never resized.
    class_table : ClassTable, optional
        The model's class table (``model.class_table``): a folder's images are
        labelled by the folder's name through it (``tench/``, ``n01440764/``),
        and a folder naming no class is an error. Array data is labelled
        already and ignores it.
    num_classes : int, optional
        The model's number of outputs: without a table, a folder source with
        another number of class folders logs a warning.

    Returns
    -------
    DataSource
        float32 NCHW images in ``[0, 1]`` with int64 labels.

    Raises
    ------
    DataError
        If the spec, split, limit or input size is invalid, or the data is
        missing, unreadable or malformed.
    """
    size = None if input_size is None else parse_input_size(input_size)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if limit is not None and (not is_int(limit) or limit < 1):
        raise DataError(f"limit must be a positive integer, got {limit!r}")
    source = _open(spec, split, size, class_table, num_classes)
    if size is not None and not isinstance(source, FolderSource):
        height, width = source.sample_shape[1:]
        if (height, width) != size:
            raise DataError(f"{source.name}: images are {height}x{width} but the input size is "
                            f"{size[0]}x{size[1]}; array data is never resized, so use the "
                            "matching input size or resize the data first")
    if limit is not None and limit < len(source):
        source = source.subset(slice(0, limit))
    logger.info("data %s: %d samples of shape %s", source.name, len(source), source.sample_shape)
    return source


def _open(spec: str, split: str, size: tuple[int, int] | None, table: ClassTable | None = None,
          num_classes: int | None = None) -> DataSource:
    """Dispatch `spec` to the matching source."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"the data spec must be a non-empty string, got {spec!r}; "
                        f"use one of: {_SPEC_FORMS}")
    if spec == "mnist-sample":
        return load_mnist_sample(split)
    if spec in BUILTIN_DATASETS:
        return load_builtin(spec, split)
    kind, colon, path = spec.partition(":")
    if colon and kind in ("npz", "folder"):
        if not path:
            raise DataError(f"data spec {spec!r} names no path after '{kind}:'")
        if kind == "npz":
            return ArraySource.from_npz(path)
        return FolderSource(path, size, class_table=table, num_classes=num_classes)
    if spec.lower().endswith(".npz"):
        return ArraySource.from_npz(spec)
    if os.path.isdir(os.path.expanduser(spec)):
        return FolderSource(spec, size, class_table=table, num_classes=num_classes)
    raise DataError(f"unknown data spec {spec!r} (not a known dataset, an .npz path or an "
                    f"existing directory); use one of: {_SPEC_FORMS}")


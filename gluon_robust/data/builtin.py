"""Gluon's built-in datasets (MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100), offline.

Gluon downloads these datasets on first use. gluon_robust never downloads:
it checks that the files Gluon needs are already in Gluon's cache directory
(``$MXNET_HOME/datasets/<name>``, default ``~/.mxnet/datasets/<name>``) and
raises :class:`~gluon_robust.errors.DataError` with instructions otherwise.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Tuple

import mxnet as mx
import numpy as np
from mxnet.gluon.data import Dataset, vision
from mxnet.gluon.utils import check_sha1

from gluon_robust.data._utils import one_line
from gluon_robust.data.sources import ArraySource
from gluon_robust.errors import DataError

__all__ = ["BUILTIN_DATASETS", "builtin_cache_dir", "load_builtin"]

logger = logging.getLogger(__name__)

_FileSpec = Tuple[str, str]  # (file name, SHA-1 that Gluon verifies)


@dataclass(frozen=True)
class _CachedFiles:
    """Files that let Gluon build one split without downloading.

    Attributes
    ----------
    required : tuple of (str, str)
        Files Gluon reads, with their SHA-1.
    archive : (str, str) or None
        An archive Gluon extracts into `required` when those are missing.
    """

    required: tuple[_FileSpec, ...]
    archive: _FileSpec | None = None


@dataclass(frozen=True)
class _Builtin:
    """How to build one Gluon dataset and which cached files it needs per split."""

    make: Callable[[str, bool], Dataset]  # (root, train) -> dataset of (HWC uint8, label)
    files: Mapping[str, _CachedFiles]


# File names and checksums mirror mxnet 1.9.1, gluon/data/vision/datasets.py.
_MNIST_FILES = {
    "train": _CachedFiles((
        ("train-images-idx3-ubyte.gz", "6c95f4b05d2bf285e1bfb0e7960c31bd3b3f8a7d"),
        ("train-labels-idx1-ubyte.gz", "2a80914081dc54586dbdf242f9805a6b8d2a15fc"))),
    "test": _CachedFiles((
        ("t10k-images-idx3-ubyte.gz", "c3a25af1f52dad7f726cce8cacb138654b760d48"),
        ("t10k-labels-idx1-ubyte.gz", "763e7fa3757d93b0cdec073cef058b2004252c17"))),
}
_FASHION_MNIST_FILES = {
    "train": _CachedFiles((
        ("train-images-idx3-ubyte.gz", "0cf37b0d40ed5169c6b3aba31069a9770ac9043d"),
        ("train-labels-idx1-ubyte.gz", "236021d52f1e40852b06a4c3008d8de8aef1e40b"))),
    "test": _CachedFiles((
        ("t10k-images-idx3-ubyte.gz", "626ed6a7c06dd17c0eec72fa3be1740f146a2863"),
        ("t10k-labels-idx1-ubyte.gz", "17f9ab60e7257a1620f4ad76bbbaf857c3920701"))),
}
# Gluon's CIFAR classes check every batch file of both splits before reading either.
_CIFAR10_FILES = _CachedFiles(
    (("data_batch_1.bin", "aadd24acce27caa71bf4b10992e9e7b2d74c2540"),
     ("data_batch_2.bin", "c0ba65cce70568cd57b4e03e9ac8d2a5367c1795"),
     ("data_batch_3.bin", "1dd00a74ab1d17a6e7d73e185b69dbf31242f295"),
     ("data_batch_4.bin", "aab85764eb3584312d3c7f65fd2fd016e36a258e"),
     ("data_batch_5.bin", "26e2849e66a845b7f1e4614ae70f4889ae604628"),
     ("test_batch.bin", "67eb016db431130d61cd03c7ad570b013799c88c")),
    archive=("cifar-10-binary.tar.gz", "fab780a1e191a7eda0f345501ccd62d20f7ed891"))
_CIFAR100_FILES = _CachedFiles(
    (("train.bin", "e207cd2e05b73b1393c74c7f5e7bea451d63e08e"),
     ("test.bin", "8fb6623e830365ff53cf14adec797474f5478006")),
    archive=("cifar-100-binary.tar.gz", "a0bb982c76b83111308126cc779a992fa506b90b"))

# Keys double as Gluon's cache sub-directory names. The lambdas look the classes
# up at call time, so tests can substitute them.
_BUILTINS: dict[str, _Builtin] = {
    "mnist": _Builtin(lambda root, train: vision.MNIST(root=root, train=train), _MNIST_FILES),
    "fashion-mnist": _Builtin(lambda root, train: vision.FashionMNIST(root=root, train=train),
                              _FASHION_MNIST_FILES),
    "cifar10": _Builtin(lambda root, train: vision.CIFAR10(root=root, train=train),
                        {"train": _CIFAR10_FILES, "test": _CIFAR10_FILES}),
    # fine_label=True: the 100 classes that CIFAR-100 models predict, not Gluon's
    # default of the 20 coarse super-classes.
    "cifar100": _Builtin(lambda root, train: vision.CIFAR100(root=root, train=train,
                                                             fine_label=True),
                         {"train": _CIFAR100_FILES, "test": _CIFAR100_FILES}),
}

#: Names of the Gluon built-in datasets accepted by :func:`load_builtin`.
BUILTIN_DATASETS: tuple[str, ...] = tuple(_BUILTINS)


def builtin_cache_dir(name: str) -> str:
    """Return the directory where Gluon caches dataset `name`.

    Parameters
    ----------
    name : str
        One of :data:`BUILTIN_DATASETS`.

    Returns
    -------
    str
        ``<MXNET_HOME>/datasets/<name>``, read from the environment on each call.
    """
    return os.path.join(mx.base.data_dir(), "datasets", name)


def load_builtin(name: str, split: str) -> ArraySource:
    """Load a split of a Gluon built-in dataset from the local cache.

    Parameters
    ----------
    name : str
        One of :data:`BUILTIN_DATASETS`.
    split : {"train", "test"}
        Which split to load.

    Returns
    -------
    ArraySource
        The whole split in memory as uint8, named ``"<name>:<split>"``.

    Raises
    ------
    DataError
        If `name` or `split` is unknown, or the dataset files are not cached
        or fail Gluon's checksum.
    """
    if name not in _BUILTINS:
        raise DataError(f"unknown built-in dataset {name!r}; choose from "
                        f"{', '.join(BUILTIN_DATASETS)}")
    builtin = _BUILTINS[name]
    if split not in builtin.files:
        raise DataError(f"{name}: unknown split {split!r}; choose from "
                        f"{', '.join(builtin.files)}")
    root = builtin_cache_dir(name)
    _check_cached(name, root, builtin.files[split])
    try:
        images, labels = builtin.make(root, split == "train")[:]
    except OSError as err:
        raise DataError(f"{name}: cannot read the cached files in '{root}' "
                        f"({one_line(err)})") from err
    logger.debug("%s:%s loaded from %s", name, split, root)
    return ArraySource(images.asnumpy().transpose(0, 3, 1, 2), np.asarray(labels),
                       name=f"{name}:{split}")


def _check_cached(name: str, root: str, files: _CachedFiles) -> None:
    """Raise DataError unless Gluon can build the split from `root` without downloading."""
    problems = {file: _file_problem(root, file, sha1) for file, sha1 in files.required}
    problems = {file: problem for file, problem in problems.items() if problem}
    if not problems:
        return
    if files.archive is not None and _file_problem(root, *files.archive) is None:
        return
    corrupt = sorted(file for file, problem in problems.items() if problem == "corrupt")
    if corrupt:
        raise DataError(f"{name}: cached file(s) {', '.join(corrupt)} in '{root}' fail Gluon's "
                        "SHA-1 check (incomplete or another version); replace them")
    wanted = ", ".join(file for file, _ in files.required)
    if files.archive is not None:
        wanted += f" (or the archive {files.archive[0]})"
    raise DataError(f"{name} is not cached and gluon_robust never downloads: put {wanted} "
                    f"into '{root}' (or set MXNET_HOME to a directory holding "
                    f"datasets/{name}/), or convert the data and use 'npz:PATH'")


def _file_problem(root: str, file: str, sha1: str) -> str | None:
    """Return ``"missing"``, ``"corrupt"`` or None (usable) for one cached file."""
    path = os.path.join(root, file)
    if not os.path.isfile(path):
        return "missing"
    if not check_sha1(path, sha1):
        return "corrupt"
    return None

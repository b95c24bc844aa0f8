"""Labelled image data behind one interface.

:func:`load_data` opens a source from a spec string (``mnist-sample``,
``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``npz:PATH`` or
``folder:PATH``). Every :class:`DataSource` streams :class:`Batch` objects of
float32 NCHW images in ``[0, 1]`` (pixel space, not normalised), int64 labels
and the samples' indices in the original source.
"""
from gluon_robust.data.convert import DatasetSource, as_source, check_fits
from gluon_robust.data.builtin import BUILTIN_DATASETS, builtin_cache_dir, load_builtin
from gluon_robust.data.folder import FolderSource
from gluon_robust.data.labels import ClassTable, class_table_for, load_class_table
from gluon_robust.data.loader import InputSize, load_data
from gluon_robust.data.predicted import PredictedLabels
from gluon_robust.data.mnist_sample import build_mnist_sample, load_mnist_sample, mnist_sample_path
from gluon_robust.data.sources import ArraySource, Batch, DataSource

__all__ = [
    "ArraySource",
    "BUILTIN_DATASETS",
    "Batch",
    "ClassTable",
    "DataSource",
    "DatasetSource",
    "FolderSource",
    "InputSize",
    "PredictedLabels",
    "class_table_for",
    "as_source",
    "check_fits",
    "build_mnist_sample",
    "builtin_cache_dir",
    "load_builtin",
    "load_class_table",
    "load_data",
    "load_mnist_sample",
    "mnist_sample_path",
]

"""A data source over an image folder with one sub-folder per class."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

import cv2
import mxnet as mx
import numpy as np
from mxnet.gluon.data.vision import ImageFolderDataset

from gluon_robust.data._utils import InputSize, one_line, parse_input_size
from gluon_robust.data.labels import ClassTable
from gluon_robust.data.sources import DataSource
from gluon_robust.errors import DataError

__all__ = ["FolderSource", "CROP_RATIO", "DEFAULT_INPUT_SIZE", "IMAGE_EXTENSIONS"]

logger = logging.getLogger(__name__)

#: Fraction of the resized short side kept by the centre crop (GluonCV's ImageNet eval preset).
CROP_RATIO = 0.875
#: Default side of the square centre crop.
DEFAULT_INPUT_SIZE = 224
#: Extensions that :class:`mxnet.gluon.data.vision.ImageFolderDataset` reads; it skips others.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_BILINEAR = 1  # MXNet/OpenCV interpolation code, as in gluon's Resize and CenterCrop transforms


class FolderSource(DataSource):
    """Images stored as ``root/<class name>/<image file>``, decoded lazily per batch.

    Class folders are listed as by
    :class:`mxnet.gluon.data.vision.ImageFolderDataset`. With a `class_table`
    (the model's, see :mod:`gluon_robust.data.labels`) each folder's name --
    a class name, a synset such as ``n01440764`` or an index -- gives the
    label of its images, the model's output index; without one, label ``i``
    is the ``i``-th folder in sorted order. Each image is decoded as RGB, resized so its
    short side is ``round(max(height, width) / 0.875)`` and centre-cropped to
    ``(height, width)`` -- the geometry of GluonCV's ImageNet evaluation preset,
    without mean/std normalisation.

    Parameters
    ----------
    root : str or os.PathLike
        The image folder.
    input_size : int or (int, int), optional
        ``(height, width)`` of the delivered images, or one int for square
        images; default (None) 224.
    class_table : ClassTable, optional
        The model's class table: folders are labelled by name through it.
    num_classes : int, optional
        The model's number of outputs: without a table, a different number of
        folders is logged as a warning (their sorted-index labels may not be the
        model's classes).

    Raises
    ------
    DataError
        If the folder is missing, has no class sub-folders or holds no images,
        `input_size` is invalid, or a folder's name matches no class (or an
        ambiguous one) of `class_table`.
    """

    def __init__(self, root: str | os.PathLike[str],
                 input_size: InputSize | None = None, *, class_table: ClassTable | None = None,
                 num_classes: int | None = None) -> None:
        crop_hw = parse_input_size(DEFAULT_INPUT_SIZE if input_size is None else input_size)
        root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        name = f"folder:{root}"
        if not os.path.isdir(root):
            problem = "is not a directory" if os.path.exists(root) else "directory not found"
            raise DataError(f"{name}: {problem}")
        dataset = ImageFolderDataset(root, flag=1)
        if not dataset.synsets:
            raise DataError(f"{name}: no class sub-folders; expected one sub-folder of "
                            "images per class, e.g. <root>/cat/0001.jpg")
        if not dataset.items:
            raise DataError(f"{name}: the class sub-folders hold no images with extension "
                            f"{', '.join(IMAGE_EXTENSIONS)}")
        super().__init__(name, len(dataset.items))
        self._folders: list[str] = list(dataset.synsets)
        if class_table is not None:
            mapping = class_table.map_folders(self._folders, name)
            self._items: list[tuple[str, int]] = [(path, mapping[label]) for path, label in dataset.items]
            self._classes: list[str] = list(class_table.names)
            logger.info("%s: %d class folders mapped to the %s classes by name", name, len(self._folders),
                        class_table.name)
        else:
            self._items = list(dataset.items)
            self._classes = list(self._folders)
            if num_classes is not None and len(self._folders) != num_classes:
                logger.warning("%s: %d class folders labelled 0..%d in sorted order, but the model has %d "
                               "classes and no class names; give them with --labels FILE if the folders are "
                               "not the model's classes in order", name, len(self._folders),
                               len(self._folders) - 1, num_classes)
        self._crop_hw: tuple[int, int] = crop_hw
        self._short_side = int(round(max(self._crop_hw) / CROP_RATIO))
        logger.debug("%s: %d images in %d classes", name, len(self._items), len(self._classes))

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(3, height, width)``: images are always decoded as RGB."""
        return (3, *self._crop_hw)

    @property
    def classes(self) -> list[str]:
        """Class names; label ``i`` is ``classes[i]`` (the table's names, or the sorted folder names)."""
        return list(self._classes)

    @property
    def folders(self) -> list[str]:
        """The class folder names, sorted."""
        return list(self._folders)

    def _labels(self, index: np.ndarray) -> np.ndarray:
        return np.array([self._items[i][1] for i in index], dtype=np.int64)

    def _load(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.empty((len(index), *self.sample_shape), dtype=np.float32)
        y = np.empty(len(index), dtype=np.int64)
        for row, item in enumerate(index):
            path, label = self._items[item]
            x[row] = self._decode(path)
            y[row] = label
        return x, y

    def _decode(self, path: str) -> np.ndarray:
        """Decode, resize and centre-crop one image to float32 CHW in [0, 1]."""
        height, width = self._crop_hw
        try:
            image = mx.nd.array(_decode_rgb(path, self.name), dtype="uint8")
            image = mx.image.resize_short(image, self._short_side, interp=_BILINEAR)
            image, _ = mx.image.center_crop(image, (width, height), interp=_BILINEAR)
            pixels = image.asnumpy()
        except mx.base.MXNetError as err:
            raise DataError(f"{self.name}: cannot decode image file '{path}' "
                            f"({one_line(err)})") from err
        return pixels.transpose(2, 0, 1).astype(np.float32) / 255.0


def _decode_rgb(path: str, name: str) -> np.ndarray:
    """Decode an image file to an RGB uint8 ``(H, W, 3)`` array, exactly as ``mx.image.imread(path, flag=1)`` does.

    OpenCV decodes it (MXNet's ``imread`` calls the same ``cv::imdecode``),
    but a corrupt file gives a clean :class:`DataError`: MXNet's asynchronous
    decoder can leave a failed allocation in its engine for a corrupt header,
    which then prints a traceback when the process exits. libpng's own
    complaint about the file is kept off the terminal.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"{name}: cannot read image file '{path}' ({err.strerror})") from None
    with _quiet_c_stderr():
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(f"{name}: cannot decode image file '{path}' (empty, truncated or not an image)")
    return np.ascontiguousarray(image[:, :, ::-1])


@contextlib.contextmanager
def _quiet_c_stderr() -> Iterator[None]:
    """Send what C libraries write to file descriptor 2 to /dev/null for the duration of the block."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced by an object without a descriptor
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)

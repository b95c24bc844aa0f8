"""Tests for gluon_robust.data: sources, spec parsing, the bundled MNIST sample."""
from __future__ import annotations

import gzip
import importlib
import os
import re
import struct
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest
from skimage import data as skdata

from gluon_robust.data import (
    ArraySource,
    Batch,
    FolderSource,
    build_mnist_sample,
    builtin,
    load_data,
    mnist_sample_path,
)
from gluon_robust.errors import DataError

RNG_SEED = 0


# ---------------------------------------------------------------- helpers and fixtures


def save_npz(path: Path, **arrays: np.ndarray) -> str:
    """Write `arrays` to `path` and return the path as a string."""
    np.savez(path, **arrays)
    return str(path)


def distinct_images(count: int, shape: tuple[int, ...] = (1, 4, 5)) -> np.ndarray:
    """uint8 images whose first pixel is their own index, so each is recognisable."""
    images = np.random.RandomState(RNG_SEED).randint(0, 256, size=(count, *shape), dtype=np.uint8)
    images.reshape(count, -1)[:, 0] = np.arange(count)
    return images


def concat(batches: list[Batch]) -> Batch:
    """Join batches into one."""
    return Batch(*(np.concatenate(parts) for parts in zip(*batches)))


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image with OpenCV (which expects BGR)."""
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def reference_eval_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """Short side to round(size / 0.875), centre crop `size`, bilinear, with plain OpenCV."""
    height, width = rgb.shape[:2]
    short = round(size / 0.875)
    if height <= width:
        new_h, new_w = short, width * short // height
    else:
        new_h, new_w = height * short // width, short
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top:top + size, left:left + size].astype(np.float64)


@pytest.fixture
def digits_npz(tmp_path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """Write an .npz of 10 distinct uint8 NCHW images with labels 0..9."""
    x, y = distinct_images(10), np.arange(10)
    return save_npz(tmp_path / "digits.npz", x=x, y=y), x, y


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photographs in class folders: cat (PNG), cup (JPEG), person (JPEG, PNG gray)."""
    root = tmp_path_factory.mktemp("photos")
    for name in ("cat", "cup", "person"):
        (root / name).mkdir()
    write_rgb(root / "cat" / "chelsea.png", skdata.chelsea())
    write_rgb(root / "cup" / "coffee.jpg", skdata.coffee())
    write_rgb(root / "person" / "astronaut.jpg", skdata.astronaut())
    gray = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2GRAY)
    assert cv2.imwrite(str(root / "person" / "gray.png"), gray)
    return root


@pytest.fixture
def shipped_sample() -> dict[str, np.ndarray]:
    with np.load(mnist_sample_path()) as archive:
        return {key: archive[key] for key in archive.files}


# ---------------------------------------------------------------- bundled MNIST sample


def test_shipped_sample_has_exact_arrays(shipped_sample: dict[str, np.ndarray]) -> None:
    assert sorted(shipped_sample) == ["x_test", "x_train", "y_test", "y_train"]
    for split, count in (("train", 4000), ("test", 1000)):
        x, y = shipped_sample[f"x_{split}"], shipped_sample[f"y_{split}"]
        assert x.shape == (count, 1, 28, 28) and x.dtype == np.uint8
        assert y.shape == (count,) and y.dtype == np.int64
    assert np.array_equal(np.bincount(shipped_sample["y_test"]), np.full(10, 100))
    assert np.array_equal(np.bincount(shipped_sample["y_train"]), np.full(10, 400))
    assert shipped_sample["x_train"].max() == 255


def test_shipped_sample_splits_are_disjoint(shipped_sample: dict[str, np.ndarray]) -> None:
    train = {image.tobytes() for image in shipped_sample["x_train"]}
    test = {image.tobytes() for image in shipped_sample["x_test"]}
    assert len(train) == 4000 and len(test) == 1000  # also: no duplicate digits
    assert not train & test


def test_rebuilding_sample_reproduces_shipped_file(
        tmp_path: Path, shipped_sample: dict[str, np.ndarray]) -> None:
    out = build_mnist_sample(tmp_path / "sub" / "sample.npz")
    assert out == tmp_path / "sub" / "sample.npz"
    assert [p.name for p in out.parent.iterdir()] == ["sample.npz"]  # no temporary file left
    with np.load(out) as rebuilt:
        assert sorted(rebuilt.files) == sorted(shipped_sample)
        for key, expected in shipped_sample.items():
            assert rebuilt[key].dtype == expected.dtype
            np.testing.assert_array_equal(rebuilt[key], expected, err_msg=key)


def test_mnist_sample_source(shipped_sample: dict[str, np.ndarray]) -> None:
    test = load_data("mnist-sample")
    assert test.name == "mnist-sample:test"
    assert len(test) == 1000 and test.sample_shape == (1, 28, 28) and test.classes is None
    x, y = test.arrays()
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x * 255, shipped_sample["x_test"])
    np.testing.assert_array_equal(y, shipped_sample["y_test"])
    train = load_data("mnist-sample", split="train")
    assert train.name == "mnist-sample:train" and len(train) == 4000


def test_mnist_sample_prefix_mixes_classes() -> None:
    _, y = load_data("mnist-sample", limit=100).arrays()
    assert set(y.tolist()) == set(range(10))


# ---------------------------------------------------------------- batches, subset, limit


def test_batches_cover_every_index_once_in_order(digits_npz) -> None:
    path, x, y = digits_npz
    batches = list(load_data(path).batches(4))
    assert [len(b.x) for b in batches] == [4, 4, 2]
    for batch in batches:
        assert batch.x.dtype == np.float32 and batch.x.shape[1:] == (1, 4, 5)
        assert batch.y.dtype == np.int64 and batch.index.dtype == np.int64
        assert 0.0 <= batch.x.min() and batch.x.max() <= 1.0
    joined = concat(batches)
    np.testing.assert_array_equal(joined.index, np.arange(10))
    np.testing.assert_array_equal(joined.y, y)
    np.testing.assert_array_equal(joined.x, x.astype(np.float32) / 255)


def test_subset_keeps_original_indices(digits_npz) -> None:
    path, x, y = digits_npz
    source = load_data(path)
    picked = source.subset([7, 2, 5])
    assert len(picked) == 3 and len(source) == 10
    batch = concat(list(picked.batches(2)))
    np.testing.assert_array_equal(batch.index, [7, 2, 5])
    np.testing.assert_array_equal(batch.y, y[[7, 2, 5]])
    np.testing.assert_array_equal(batch.x, x[[7, 2, 5]] / np.float32(255))
    nested = picked.subset([2, 0])  # positions within `picked`
    np.testing.assert_array_equal(concat(list(nested.batches(5))).index, [5, 7])
    np.testing.assert_array_equal(next(source.subset(slice(1, None, 3)).batches(9)).index,
                                  [1, 4, 7])
    empty = source.subset([])
    assert len(empty) == 0 and list(empty.batches(3)) == []
    assert empty.arrays()[0].shape == (0, 1, 4, 5)


def test_limit_keeps_first_samples(digits_npz) -> None:
    path, _, y = digits_npz
    limited = load_data(path, limit=3)
    x3, y3 = limited.arrays()
    assert len(limited) == 3 and len(x3) == 3
    np.testing.assert_array_equal(y3, y[:3])
    np.testing.assert_array_equal(next(limited.batches(10)).index, [0, 1, 2])
    assert len(load_data(path, limit=1000)) == 10


@pytest.mark.parametrize("indices, match", [
    ([10], "out of range"),
    ([-1], "out of range"),
    ([1, 1], "duplicates"),
    ([0.5], "integers"),
    ([[0, 1]], "1-D"),
])
def test_subset_rejects_bad_indices(digits_npz, indices, match) -> None:
    with pytest.raises(DataError, match=match):
        load_data(digits_npz[0]).subset(indices)


@pytest.mark.parametrize("batch_size", [0, -2, 1.5, True])
def test_batches_reject_bad_batch_size(digits_npz, batch_size) -> None:
    with pytest.raises(DataError, match="batch size must be a positive integer"):
        next(load_data(digits_npz[0]).batches(batch_size))


# ---------------------------------------------------------------- npz layouts and dtypes


def test_uint8_and_float_npz_give_same_batches(tmp_path: Path) -> None:
    x, y = distinct_images(6, (3, 5, 4)), np.arange(6) % 3
    as_uint8 = load_data(save_npz(tmp_path / "u8.npz", x=x, y=y))
    for dtype in (np.float32, np.float64):
        as_float = load_data(save_npz(tmp_path / "f.npz", x=(x / 255.0).astype(dtype), y=y))
        for left, right in zip(as_uint8.batches(4), as_float.batches(4)):
            np.testing.assert_array_equal(left.x, right.x)
            assert right.x.dtype == np.float32
            np.testing.assert_array_equal(left.y, right.y)


@pytest.mark.parametrize("channels", [1, 3])
def test_nhwc_and_nchw_npz_give_same_batches(tmp_path: Path, channels: int) -> None:
    nchw, y = distinct_images(5, (channels, 6, 7)), np.arange(5)
    nhwc = nchw.transpose(0, 2, 3, 1)
    from_nchw = load_data(save_npz(tmp_path / "nchw.npz", x=nchw, y=y))
    from_nhwc = load_data(save_npz(tmp_path / "nhwc.npz", x=nhwc, y=y))
    assert from_nchw.sample_shape == from_nhwc.sample_shape == (channels, 6, 7)
    for left, right in zip(from_nchw.batches(2), from_nhwc.batches(2)):
        np.testing.assert_array_equal(left.x, right.x)
        assert right.x.flags.c_contiguous


def test_grayscale_nhw_and_wide_int_npz(tmp_path: Path) -> None:
    x, y = distinct_images(4, (6, 7)), np.arange(4, dtype=np.uint8)
    gray = load_data(save_npz(tmp_path / "nhw.npz", x=x, y=y))
    assert gray.sample_shape == (1, 6, 7)
    widened = load_data(save_npz(tmp_path / "i64.npz", x=x.astype(np.int64), y=y))
    np.testing.assert_array_equal(gray.arrays()[0], widened.arrays()[0])
    np.testing.assert_array_equal(gray.arrays()[0][:, 0], x / np.float32(255))
    assert gray.arrays()[1].dtype == np.int64


def test_bare_npz_path_and_input_size_check(digits_npz) -> None:
    path = digits_npz[0]
    assert load_data(path).name == f"npz:{path}"
    assert len(load_data(f"npz:{path}", input_size=(4, 5))) == 10
    with pytest.raises(DataError, match=r"images are 4x5 but the input size is 224x224"):
        load_data(path, input_size=224)


def test_array_source_from_memory() -> None:
    source = ArraySource(np.zeros((2, 8, 8, 3), dtype=np.float32), np.array([0, 1]))
    assert source.sample_shape == (3, 8, 8) and source.name == "arrays"


# ---------------------------------------------------------------- npz errors


def test_missing_npz(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent\.npz: file not found"):
        load_data(str(tmp_path / "absent.npz"))


def test_corrupt_npz(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(np.random.RandomState(RNG_SEED).bytes(256))
    with pytest.raises(DataError, match=r"junk\.npz: is not an \.npz archive"):
        load_data(str(path))


def test_truncated_npz(tmp_path: Path) -> None:
    path = tmp_path / "cut.npz"
    np.savez_compressed(path, x=distinct_images(50), y=np.arange(50))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"cut\.npz: corrupt \.npz archive"):
        load_data(str(path))


def test_npy_instead_of_npz(tmp_path: Path) -> None:
    path = tmp_path / "single.npz"
    with open(path, "wb") as stream:
        np.save(stream, distinct_images(2))
    with pytest.raises(DataError, match=r"single-array \.npy file"):
        load_data(str(path))


def test_npz_missing_key(tmp_path: Path) -> None:
    path = save_npz(tmp_path / "keys.npz", images=distinct_images(2), y=np.arange(2))
    with pytest.raises(DataError, match=re.escape("missing array(s) 'x'; the file has "
                                                  "['images', 'y']")):
        load_data(path)


@pytest.mark.parametrize("x, match", [
    (np.zeros((4, 784), np.uint8), r"images must be 3-D .* got shape \(4, 784\)"),
    (np.zeros((4, 2, 8, 8), np.uint8), r"1 or 3 channels .* got shape \(4, 2, 8, 8\)"),
    (np.zeros((4, 3, 8, 3), np.uint8), r"channel axis is ambiguous"),
    (np.full((4, 1, 8, 8), 255.0, np.float32), r"\[0, 1\], got values from 255 .*divide by 255"),
    (np.full((4, 1, 8, 8), -0.5, np.float32), r"must lie in \[0, 1\], got values from -0.5"),
    (np.full((4, 1, 8, 8), np.nan, np.float32), r"must lie in \[0, 1\]"),
    (np.full((4, 1, 8, 8), 300, np.int32), r"integer images must lie in 0\.\.255"),
    (np.full((4, 1, 8, 8), "a"), r"non-numeric dtype <U1"),
    (np.zeros((4, 1, 8, 8), bool), r"non-numeric dtype bool"),
    (np.zeros((0, 1, 8, 8), np.uint8), r"images are empty"),
])
def test_npz_bad_images(tmp_path: Path, x: np.ndarray, match: str) -> None:
    path = save_npz(tmp_path / "bad.npz", x=x, y=np.zeros(len(x), np.int64))
    with pytest.raises(DataError, match=match):
        load_data(path)


@pytest.mark.parametrize("y, match", [
    (np.array([0.0, 1.0, 2.0, 3.0]), r"labels must be integers, got dtype float64"),
    (np.array([0, 1, 2]), r"labels must have shape \(4,\) .* got \(3,\)"),
    (np.zeros((4, 1), np.int64), r"labels must have shape \(4,\)"),
    (np.array([0, -1, 2, 3]), r"labels must be non-negative, found -1"),
])
def test_npz_bad_labels(tmp_path: Path, y: np.ndarray, match: str) -> None:
    path = save_npz(tmp_path / "bad.npz", x=distinct_images(4), y=y)
    with pytest.raises(DataError, match=match):
        load_data(path)


# ---------------------------------------------------------------- image folders


def test_folder_of_photographs(photo_folder: Path) -> None:
    source = load_data(f"folder:{photo_folder}", input_size=224)
    assert source.name == f"folder:{photo_folder}"
    assert source.classes == ["cat", "cup", "person"]
    assert len(source) == 4 and source.sample_shape == (3, 224, 224)
    batches = list(source.batches(3))
    assert [len(b.x) for b in batches] == [3, 1]
    joined = concat(batches)
    assert joined.x.shape == (4, 3, 224, 224) and joined.x.dtype == np.float32
    assert 0.0 <= joined.x.min() and joined.x.max() <= 1.0 and joined.x.std() > 0.1
    np.testing.assert_array_equal(joined.y, [0, 1, 2, 2])
    np.testing.assert_array_equal(joined.index, np.arange(4))
    gray = joined.x[3]  # person/gray.png: decoded to three equal channels
    np.testing.assert_array_equal(gray[0], gray[1])
    np.testing.assert_array_equal(gray[0], gray[2])
    # The lossless cat photo matches an independent OpenCV resize-and-crop, RGB order included.
    expected = reference_eval_crop(skdata.chelsea(), 224).transpose(2, 0, 1) / 255
    assert np.abs(joined.x[0] - expected).mean() < 1 / 255


def test_folder_crop_geometry_matches_opencv(tmp_path: Path) -> None:
    height, width = 300, 400
    rows, cols = np.mgrid[0:height, 0:width]
    ramp = np.stack([cols * 255 / (width - 1), rows * 255 / (height - 1),
                     np.full((height, width), 128.0)], axis=-1)
    rgb = np.round(ramp).astype(np.uint8)
    (tmp_path / "ramp").mkdir()
    write_rgb(tmp_path / "ramp" / "ramp.png", rgb)
    x, y = load_data(str(tmp_path)).arrays()  # a bare directory; default input size 224
    assert x.shape == (1, 3, 224, 224) and y.tolist() == [0]
    expected = reference_eval_crop(rgb, 224).transpose(2, 0, 1)
    assert np.abs(x[0] * 255 - expected).max() <= 2.0
    # The crop is centred: it starts 58 columns into the 341-wide resized image.
    assert abs(x[0, 0, 0, 0] * 255 - 58 * 255 / 340) <= 2.0


def test_folder_non_square_input_size(photo_folder: Path) -> None:
    source = load_data(str(photo_folder), input_size=(64, 96)).subset([1])
    x, y = source.arrays()
    assert source.sample_shape == (3, 64, 96) and x.shape == (1, 3, 64, 96)
    assert y.tolist() == [1]


def test_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: directory not found"):
        FolderSource(tmp_path / "nowhere")


def test_folder_without_class_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no class sub-folders"):
        load_data(f"folder:{tmp_path}")


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match=r"hold no images with extension \.jpg, \.jpeg, \.png"):
        load_data(f"folder:{tmp_path}")


def test_folder_undecodable_image(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    write_rgb(tmp_path / "cat" / "a.png", skdata.chelsea())
    (tmp_path / "cat" / "b.jpg").write_bytes(b"this is not a JPEG")
    source = load_data(f"folder:{tmp_path}")
    assert next(source.batches(1)).x.shape == (1, 3, 224, 224)  # a.png is fine
    with pytest.raises(DataError, match=r"cannot decode image file '.*b\.jpg'"):
        source.arrays()


# ---------------------------------------------------------------- Gluon built-in datasets


@pytest.mark.parametrize("name, expected_file", [
    ("mnist", "t10k-images-idx3-ubyte.gz"),
    ("fashion-mnist", "t10k-labels-idx1-ubyte.gz"),
    ("cifar10", "cifar-10-binary.tar.gz"),
    ("cifar100", "cifar-100-binary.tar.gz"),
])
def test_builtin_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                            expected_file: str) -> None:
    monkeypatch.setenv("MXNET_HOME", str(tmp_path))
    cache = os.path.join(str(tmp_path), "datasets", name)
    with pytest.raises(DataError, match=f"{name} is not cached.*{re.escape(expected_file)}"
                                        f".*'{re.escape(cache)}'.*npz:PATH"):
        load_data(name)
    assert not os.path.exists(cache)  # nothing created, nothing downloaded


def test_builtin_corrupt_cached_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MXNET_HOME", str(tmp_path))
    cache = tmp_path / "datasets" / "mnist"
    cache.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (cache / name).write_bytes(b"truncated")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz, train-labels.* SHA-1"):
        load_data("mnist", split="train")


@pytest.fixture
def gluon_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point MXNET_HOME at a cache whose files pass every SHA-1 check; forbid downloads."""

    def forbid_download(*args, **kwargs):
        raise AssertionError(f"attempted download: {args}")

    monkeypatch.setenv("MXNET_HOME", str(tmp_path))
    for module in (builtin, mx.gluon.utils, importlib.import_module(
            "mxnet.gluon.data.vision.datasets")):
        monkeypatch.setattr(module, "check_sha1", lambda path, sha1: True)
    monkeypatch.setattr(mx.gluon.utils.requests, "get", forbid_download)
    return tmp_path / "datasets"


def test_builtin_mnist_reads_gluon_files(gluon_cache: Path) -> None:
    images, labels = distinct_images(3, (28, 28)), np.array([4, 0, 9], np.uint8)
    cache = gluon_cache / "mnist"
    cache.mkdir(parents=True)
    with gzip.open(cache / "t10k-images-idx3-ubyte.gz", "wb") as stream:
        stream.write(struct.pack(">IIII", 2051, 3, 28, 28) + images.tobytes())
    with gzip.open(cache / "t10k-labels-idx1-ubyte.gz", "wb") as stream:
        stream.write(struct.pack(">II", 2049, 3) + labels.tobytes())
    source = load_data("mnist", input_size=28)
    assert source.name == "mnist:test" and source.sample_shape == (1, 28, 28)
    x, y = source.arrays()
    np.testing.assert_array_equal(x[:, 0], images / np.float32(255))
    assert y.dtype == np.int64 and y.tolist() == [4, 0, 9]


def test_builtin_cifar100_uses_fine_labels(gluon_cache: Path) -> None:
    chw = {"train": distinct_images(4, (3, 32, 32)), "test": distinct_images(2, (3, 32, 32))}
    cache = gluon_cache / "cifar100"
    cache.mkdir(parents=True)
    for split, images in chw.items():
        coarse = np.full((len(images), 1), 19, np.uint8)
        fine = np.arange(len(images), dtype=np.uint8)[:, np.newaxis] + 50
        rows = np.hstack([coarse, fine, images.reshape(len(images), -1)])
        (cache / f"{split}.bin").write_bytes(rows.tobytes())
    x, y = load_data("cifar100", split="train").arrays()
    np.testing.assert_array_equal(x, chw["train"] / np.float32(255))
    assert y.tolist() == [50, 51, 52, 53]


# ---------------------------------------------------------------- spec and argument errors


@pytest.mark.parametrize("spec, match", [
    ("imagenet", r"unknown data spec 'imagenet'.*mnist-sample, mnist, .*npz:PATH.*folder:PATH"),
    ("", r"non-empty string"),
    ("npz:", r"no path after 'npz:'"),
    ("folder:", r"no path after 'folder:'"),
])
def test_bad_spec(spec: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_data(spec)


@pytest.mark.parametrize("limit", [0, -1, 2.0, True])
def test_bad_limit(limit) -> None:
    with pytest.raises(DataError, match=r"limit must be a positive integer"):
        load_data("mnist-sample", limit=limit)


@pytest.mark.parametrize("input_size", [0, (28,), (28, 0), "28", 28.0])
def test_bad_input_size(input_size) -> None:
    with pytest.raises(DataError, match=r"input size must be a positive integer"):
        load_data("mnist-sample", input_size=input_size)


def test_bad_split() -> None:
    with pytest.raises(DataError, match=r"unknown split 'val'; choose from train, test"):
        load_data("mnist-sample", split="val")

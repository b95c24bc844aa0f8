"""Atomic output: files and directories appear whole or not at all."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from gluon_robust.io import (
    StreamingNpzWriter,
    atomic_path,
    atomic_save,
    atomic_save_npz,
    atomic_write_json,
    atomic_write_text,
    sha256_of,
)
from gluon_robust.reporting import MANIFEST_NAME, format_table, save_png, staged_output


def listing(root: Path) -> dict:
    """Every file under ``root`` with its bytes (hidden temporary files included)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ JSON/text
def test_atomic_write_json_round_trips_numpy_values(tmp_path):
    path = tmp_path / "sub" / "summary.json"  # the directory is created
    data = {"n": np.int64(3), "acc": np.float32(0.5), "arr": np.arange(3), "path": Path("a/b"), "ok": True}
    atomic_write_json(path, data)
    assert json.loads(path.read_text()) == {"n": 3, "acc": 0.5, "arr": [0, 1, 2], "path": "a/b", "ok": True}
    assert path.read_text().endswith("\n")
    assert listing(tmp_path).keys() == {"sub/summary.json"}
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask()


def test_failed_json_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"v": 1})
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        atomic_write_json(path, {"v": object()})
    assert listing(tmp_path) == {"summary.json": b'{\n  "v": 1\n}\n'}


def test_atomic_path_replaces_only_on_success(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(path) as tmp:
            Path(tmp).write_text("half")
            assert path.read_text() == "old"  # not visible while being written
            raise RuntimeError("boom")
    assert listing(tmp_path) == {"out.txt": b"old"}
    with atomic_path(path) as tmp:
        Path(tmp).write_text("new")
    assert listing(tmp_path) == {"out.txt": b"new"}


def test_atomic_save_npz_and_atomic_save(tmp_path):
    x = np.random.RandomState(0).rand(3, 2).astype(np.float32)
    atomic_save_npz(tmp_path / "a.npz", x=x, y=np.arange(3))
    with np.load(tmp_path / "a.npz") as npz:
        np.testing.assert_array_equal(npz["x"], x)
        np.testing.assert_array_equal(npz["y"], np.arange(3))
    atomic_save(tmp_path / "b.bin", lambda tmp: Path(tmp).write_bytes(b"abc"))
    assert listing(tmp_path).keys() == {"a.npz", "b.bin"}

    def failing(tmp):
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_save(tmp_path / "b.bin", failing)
    assert listing(tmp_path)["b.bin"] == b"abc" and len(listing(tmp_path)) == 2


def test_sha256_of(tmp_path):
    data = np.random.RandomState(0).bytes(3 << 20)
    (tmp_path / "f").write_bytes(data)
    assert sha256_of(tmp_path / "f", chunk=1 << 16) == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------- StreamingNpzWriter
def test_streaming_npz_round_trip(tmp_path):
    rng = np.random.RandomState(0)
    full = rng.rand(10, 1, 4, 5).astype(np.float32)
    path = tmp_path / "adversarial.npz"
    writer = StreamingNpzWriter(path, "x_adv", full.shape, np.float32)
    for start in (0, 4, 8):
        writer.write(full[start:start + 4].astype(np.float64))  # converted to the declared dtype
        assert not path.exists()  # nothing visible before close
    writer.close(y=np.arange(10), success=np.ones(10, bool), distance=np.full(10, np.nan))
    with np.load(path) as npz:
        assert sorted(npz.files) == ["distance", "success", "x_adv", "y"]
        assert npz["x_adv"].dtype == np.float32
        np.testing.assert_array_equal(npz["x_adv"], full)
        np.testing.assert_array_equal(npz["y"], np.arange(10))
        assert npz["success"].dtype == bool and np.isnan(npz["distance"]).all()
    assert listing(tmp_path).keys() == {"adversarial.npz"}
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask()


def test_streaming_npz_abort_leaves_nothing(tmp_path):
    writer = StreamingNpzWriter(tmp_path / "a.npz", "x_adv", (4, 3), np.float32)
    writer.write(np.zeros((2, 3)))
    writer.abort()
    assert listing(tmp_path) == {}


def test_streaming_npz_abort_keeps_an_existing_file(tmp_path):
    path = tmp_path / "a.npz"
    atomic_save_npz(path, x_adv=np.ones(2))
    before = listing(tmp_path)
    writer = StreamingNpzWriter(path, "x_adv", (4, 3), np.float32)
    writer.write(np.zeros((1, 3)))
    writer.abort()
    assert listing(tmp_path) == before


def test_streaming_npz_rejects_wrong_chunks_and_short_streams(tmp_path):
    writer = StreamingNpzWriter(tmp_path / "a.npz", "x_adv", (4, 3), np.float32)
    with pytest.raises(ValueError, match=r"chunk of shape \(2, 2\) does not fit array \(4, 3\) at row 0"):
        writer.write(np.zeros((2, 2)))
    writer.write(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="at row 3"):
        writer.write(np.zeros((2, 3)))  # would overflow the declared rows
    with pytest.raises(ValueError, match="streamed 3 rows, expected 4"):
        writer.close()
    assert listing(tmp_path) == {}


def test_streaming_npz_failing_close_leaves_nothing(tmp_path):
    writer = StreamingNpzWriter(tmp_path / "a.npz", "x_adv", (1, 2), np.float32)
    writer.write(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="allow_pickle"):
        writer.close(bad=np.array([object()], dtype=object))  # object arrays are never written
    assert listing(tmp_path) == {}


# ---------------------------------------------------------------- staged_output
def test_staged_output_moves_everything_on_success(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("kept")
    (out / "images").mkdir()
    (out / "images" / "stale.png").write_bytes(b"old")
    with staged_output(out) as stage:
        assert stage.parent == out and stage.name.startswith(".staging-")
        (stage / "summary.json").write_text("{}")
        (stage / "images").mkdir()
        (stage / "images" / "a.png").write_bytes(b"png")
        assert not (out / "summary.json").exists()  # invisible until the block succeeds
    files = listing(out)
    assert json.loads(files.pop(MANIFEST_NAME)) == {"outputs": ["images", "summary.json"]}  # keep.txt is not ours
    assert files == {"keep.txt": b"kept", "summary.json": b"{}", "images/a.png": b"png"}  # no staging left


def test_staged_output_exception_leaves_the_out_dir_untouched(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("previous run")
    before = listing(out)
    with pytest.raises(KeyboardInterrupt):
        with staged_output(out) as stage:
            (stage / "summary.json").write_text("half")
            (stage / "adversarial.npz").write_bytes(b"partial")
            raise KeyboardInterrupt  # even a BaseException
    assert listing(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


def test_staged_output_in_a_new_directory_leaves_no_files_on_error(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError):
        with staged_output(out) as stage:
            (stage / "x").write_text("x")
            raise RuntimeError("fail")
    assert not out.exists() or listing(out) == {}


# ---------------------------------------------------------------- small helpers
def test_save_png_grey_and_rgb(tmp_path):
    grey = np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 3, 4)
    save_png(tmp_path / "g.png", grey)
    back = cv2.imread(str(tmp_path / "g.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back, np.round(grey[0] * 255).astype(np.uint8))
    rgb = np.zeros((3, 2, 2), np.float32)
    rgb[0] = 1.0  # pure red
    save_png(tmp_path / "c.png", rgb)
    bgr = cv2.imread(str(tmp_path / "c.png"))
    assert bgr[0, 0].tolist() == [0, 0, 255]
    save_png(tmp_path / "b.png", np.full((1, 2, 2), 127.5, np.float32), bounds=(0, 255))
    assert cv2.imread(str(tmp_path / "b.png"), cv2.IMREAD_UNCHANGED).tolist() == [[128, 128], [128, 128]]
    with pytest.raises(ValueError, match="PNG needs 1 or 3 channels, got 2"):
        save_png(tmp_path / "bad.png", np.zeros((2, 2, 2), np.float32))


def test_format_table():
    text = format_table([["pgd", "linf", "90.0%"], ["fgsm", "l2", "5.0%"]], ["attack", "norm", "accuracy"])
    assert text.splitlines() == [
        "attack  norm  accuracy",
        "------  ----  --------",
        "pgd     linf  90.0%",
        "fgsm    l2    5.0%",
    ]

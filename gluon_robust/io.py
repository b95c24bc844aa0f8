"""Atomic file output: a reader never sees a half-written file.

Every output (reports, adversarial examples, params, checkpoints) is written
to a temporary file in the destination directory and then moved into place
with :func:`os.replace`, which is atomic on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

__all__ = [
    "atomic_path", "atomic_save", "atomic_write_text", "atomic_write_json", "atomic_save_npz", "sha256_of",
    "StreamingNpzWriter",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path that replaces ``path`` when the block succeeds.

    Parameters
    ----------
    path : str or path
        The final destination. Its directory is created if missing.
    suffix : str
        Suffix of the temporary name, for writers that insist on an extension
        (``numpy.savez`` appends ``.npz`` otherwise).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically; numpy scalars and arrays are converted."""
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``numpy.savez_compressed`` to ``path``, atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def atomic_save(path: str | os.PathLike, writer: Callable[[str], None], suffix: str = "") -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path, suffix=suffix) as tmp:
        writer(tmp)


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


class StreamingNpzWriter:
    """Write an ``.npz`` whose big array arrives batch by batch, in flat memory.

    The big array is streamed into its own zip entry as batches arrive; small
    per-sample arrays are added at :meth:`close`. The file appears atomically
    at ``path`` only when :meth:`close` succeeds.

    Parameters
    ----------
    path : str or path
        Destination ``.npz``.
    name : str
        Name of the streamed array (``x_adv`` is read back as ``npz["x_adv"]``).
    shape : tuple of int
        Full shape of the streamed array; the first axis is filled by batches.
    dtype : numpy dtype
        Its dtype.
    """

    def __init__(self, path: str | os.PathLike, name: str, shape: tuple, dtype: np.dtype) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._shape = tuple(int(s) for s in shape)
        self._dtype = np.dtype(dtype)
        self._written = 0
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._entry = self._zip.open(f"{name}.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(self._dtype), "fortran_order": False, "shape": self._shape}
        np.lib.format.write_array_header_2_0(self._entry, header)

    def write(self, chunk: np.ndarray) -> None:
        """Append ``chunk`` (a slice along the first axis) to the streamed array."""
        chunk = np.ascontiguousarray(chunk, dtype=self._dtype)
        if chunk.shape[1:] != self._shape[1:] or self._written + len(chunk) > self._shape[0]:
            raise ValueError(f"chunk of shape {chunk.shape} does not fit array {self._shape} at row {self._written}")
        self._entry.write(chunk.tobytes())
        self._written += len(chunk)

    def close(self, **small: np.ndarray) -> None:
        """Finish the streamed array, add ``small`` arrays, and move the file into place."""
        if self._written != self._shape[0]:
            self.abort()
            raise ValueError(f"streamed {self._written} rows, expected {self._shape[0]}")
        try:
            self._entry.close()
            for key, value in small.items():
                with self._zip.open(f"{key}.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asarray(value), allow_pickle=False)
            self._zip.close()
            os.chmod(self._tmp, 0o666 & ~_umask())
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()  # e.g. an object array among ``small``: leave nothing half-written
            raise

    def abort(self) -> None:
        """Discard the partial file."""
        try:
            self._entry.close()
            self._zip.close()
        finally:
            if os.path.exists(self._tmp):
                os.remove(self._tmp)

"""Output directories that appear whole or not at all, and small output helpers."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import numpy as np

__all__ = ["staged_output", "versions", "save_png", "format_table"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def staged_output(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging directory whose contents move into ``out_dir`` on success.

    On any error the staging directory is deleted and ``out_dir`` keeps what
    it held before: nothing half-written is left behind. Each entry is moved
    with :func:`os.replace` (an existing entry of the same name is replaced).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield stage
        for entry in sorted(stage.iterdir()):
            target = out / entry.name
            if target.is_dir() and entry.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def versions() -> Dict[str, str]:
    """Versions of Python and the packages that determine results."""
    import mxnet

    from ._version import __version__

    out = {"python": platform.python_version(), "gluon_robust": __version__, "mxnet": mxnet.__version__,
           "numpy": np.__version__}
    try:
        from importlib.metadata import version

        out["gluoncv"] = version("gluoncv")
    except Exception:  # noqa: BLE001 -- metadata is optional information
        out["gluoncv"] = "unknown"
    return out


def save_png(path: str | os.PathLike, image: np.ndarray, bounds: Sequence[float] = (0.0, 1.0)) -> None:
    """Save one CHW image in ``bounds`` as an 8-bit PNG (grey for 1 channel, RGB for 3)."""
    import cv2

    low, high = bounds
    img = np.clip((np.asarray(image, np.float32) - low) / (high - low), 0.0, 1.0)
    img = np.round(img * 255).astype(np.uint8).transpose(1, 2, 0)
    if img.shape[2] == 3:
        img = img[:, :, ::-1]  # OpenCV writes BGR
    elif img.shape[2] != 1:
        raise ValueError(f"PNG needs 1 or 3 channels, got {img.shape[2]}")
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}")


def format_table(rows: List[Sequence[object]], header: Sequence[str]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(h) for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

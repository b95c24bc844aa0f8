"""Output directories that appear whole or not at all, and small output helpers.

Every command that writes an output directory publishes through
:func:`staged_output` (or, for files that must be written in place, such as a
training run's weights, :func:`record_outputs`): the directory then names the
entries of its last run in a small manifest, :data:`MANIFEST_NAME`, and the
next run that publishes there removes those entries (only those, never a
file the user put there) so the directory holds exactly the new run's
outputs. Staging directories carry their owner's host and process id in
their name, and :func:`prepare_output_dir` removes those whose process is
gone (a killed run's leftovers), never a live run's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import numpy as np

from .interrupts import deferred, set_hint

__all__ = ["staged_output", "prepare_output_dir", "record_outputs", "recorded_outputs", "MANIFEST_NAME", "versions",
           "save_png", "format_table"]

logger = logging.getLogger(__name__)

#: The manifest of an output directory: the entries its last run published.
MANIFEST_NAME = ".gluon-robust-outputs.json"
_STAGING = ".staging-"
_STAGING_NAME = re.compile(r"^\.staging-(?P<host>[A-Za-z0-9_.-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "localhost"


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user's counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_output_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` and remove the staging directories of runs that died there.

    Only staging directories whose name says they were made on this host by
    a process that no longer exists are removed; a concurrent run's staging
    (its process is alive) and anything not named like ours are left alone.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    host = _host()
    for entry in out.iterdir():
        match = _STAGING_NAME.match(entry.name)
        if match is None or not entry.is_dir() or entry.is_symlink():
            continue
        if match["host"] != host or _process_alive(int(match["pid"])):
            continue
        logger.info("removing %s, left behind by process %s that no longer runs", entry, match["pid"])
        shutil.rmtree(entry, ignore_errors=True)
    return out


def recorded_outputs(out_dir: str | os.PathLike) -> List[str]:
    """The entries the manifest of ``out_dir`` lists (empty without a readable manifest)."""
    path = Path(out_dir) / MANIFEST_NAME
    try:
        names = json.loads(path.read_text(encoding="utf-8")).get("outputs", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [n for n in names if isinstance(n, str) and _plain_name(n)]


def _plain_name(name: str) -> bool:
    """A single entry of the directory itself: no separators, not ``.``/``..``, not the manifest."""
    return bool(name) and name not in (".", "..", MANIFEST_NAME) and "/" not in name and os.sep not in name \
        and not (os.altsep and os.altsep in name)


def _write_manifest(out: Path, names: Sequence[str]) -> None:
    from .io import atomic_write_json

    atomic_write_json(out / MANIFEST_NAME, {"outputs": sorted(set(names))})


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def record_outputs(out_dir: str | os.PathLike, names: Sequence[str], keep: Sequence[str] = ()) -> List[str]:
    """Make ``names`` the outputs of ``out_dir``'s run and remove the previous run's other entries.

    Call it once the entries exist. Only entries the previous manifest lists
    are removed, except those in ``names`` or ``keep``. The manifest first
    lists both runs' entries, so a crash in between leaves nothing unlisted.

    Returns
    -------
    list of str
        The removed entries.
    """
    out = Path(out_dir)
    names = [str(n) for n in names]
    bad = [n for n in names if not _plain_name(n)]
    if bad:
        raise ValueError(f"outputs must be entries of {out} itself, got {bad}")
    previous = recorded_outputs(out)
    stale = [n for n in previous if n not in names and n not in keep]
    with deferred():
        if stale:
            _write_manifest(out, previous + names)
            for name in stale:
                _remove(out / name)
            logger.info("removed the previous run's %s from %s", ", ".join(stale), out)
        _write_manifest(out, names)
    return stale


@contextlib.contextmanager
def staged_output(out_dir: str | os.PathLike, replaces: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a staging directory whose contents move into ``out_dir`` on success.

    On any error the staging directory is deleted and ``out_dir`` keeps what
    it held before: nothing half-written is left behind. On success each
    entry is moved with :func:`os.replace` (an existing entry of the same name
    is replaced), the previous run's other outputs (see :func:`record_outputs`)
    and the entries named in ``replaces`` (e.g. a finished run's resume state)
    are removed, all with SIGINT and SIGTERM held (:func:`~gluon_robust.interrupts.deferred`).
    An interruption before that says so in its hint: nothing partial was published.
    """
    out = prepare_output_dir(out_dir)
    stage = Path(tempfile.mkdtemp(prefix=f"{_STAGING}{_host()}.{os.getpid()}.", dir=out))
    try:
        yield stage
        with deferred():
            names: List[str] = []
            for entry in sorted(stage.iterdir()):
                if entry.name == MANIFEST_NAME:  # a nested run's manifest: this run writes its own
                    continue
                target = out / entry.name
                if target.is_dir() != entry.is_dir() or (target.is_dir() and entry.is_dir()):
                    _remove(target)
                os.replace(entry, target)
                names.append(entry.name)
            record_outputs(out, names)
            for name in replaces:
                if name not in names:
                    _remove(out / name)
    except KeyboardInterrupt as err:
        set_hint(err, f"nothing partial was published in {out}")
        raise
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

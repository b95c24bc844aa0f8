"""File integrity: no file gluon-robust reads can run code, and a changed file is refused.

Python pickles execute code when they are loaded, so gluon-robust never
unpickles anything: every file it reads is data only (JSON, YAML through
``safe_load``, ``.npz`` with ``allow_pickle=False``, MXNet ``.params``). This
module holds the checks shared by every reader:

* :func:`refuse_pickle` sniffs a file's first bytes and refuses a pickle with
  a one-line error, instead of a confusing parse error further down;
* :func:`load_npz` reads every array of an ``.npz`` without pickle;
* :func:`write_manifest` and :func:`verify_manifest` record and check the
  SHA-256 of every file of a set written together (a checkpoint generation),
  so a corrupt, replaced or missing file is refused before anything is loaded;
* :func:`arrays_digest` is a SHA-256 over named arrays, stored inside a file
  (the evaluation state) so that an edited file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Iterable, Mapping, Type

import numpy as np

from .errors import ConfigError, GluonRobustError
from .io import atomic_write_json, sha256_of

__all__ = [
    "MANIFEST_FORMAT", "is_pickle", "refuse_pickle", "load_npz", "arrays_digest", "write_manifest", "verify_manifest",
]

#: The ``format`` entry of a manifest written by :func:`write_manifest`.
MANIFEST_FORMAT = "gluon-robust-manifest/1"

_PICKLE_PROTOCOLS = range(2, 6)  # protocol 2+ starts with PROTO (0x80) and the protocol number
_FIX = "replace it with a file written by gluon-robust"
_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def is_pickle(path: str | os.PathLike) -> bool:
    """Whether the file at ``path`` starts like a Python pickle (protocol 2 or later).

    Parameters
    ----------
    path : str or path
        An existing file.

    Returns
    -------
    bool
        True if the first byte is the ``PROTO`` opcode (``0x80``) followed by
        a protocol number from 2 to 5.
    """
    with open(path, "rb") as handle:
        head = handle.read(2)
    return len(head) == 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS


def refuse_pickle(path: str | os.PathLike, what: str, error: Type[GluonRobustError] = ConfigError,
                  fix: str = _FIX) -> None:
    """Raise ``error`` if ``path`` is a Python pickle; gluon-robust never loads one.

    Parameters
    ----------
    path : str or path
        An existing file.
    what : str
        What the file should be, for the message (``"checkpoint optimizer state"``).
    error : GluonRobustError subclass
        The exception class to raise (``ConfigError``, ``DataError``, ``ModelError``).
    fix : str
        What the user should do, ending the message.

    Raises
    ------
    GluonRobustError
        ``error`` with a one-line message naming the file.
    """
    if is_pickle(path):
        raise error(f"{what} {path} is a Python pickle, which gluon-robust never loads because unpickling can "
                    f"run arbitrary code; {fix}")


def load_npz(path: str | os.PathLike, what: str, error: Type[GluonRobustError] = ConfigError,
             fix: str = _FIX) -> Dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read without pickle.

    Parameters
    ----------
    path : str or path
        An existing ``.npz`` file.
    what : str
        What the file is, for messages.
    error : GluonRobustError subclass
        The exception class to raise.
    fix : str
        What the user should do, ending every message.

    Returns
    -------
    dict of str to numpy.ndarray
        The arrays by name.

    Raises
    ------
    GluonRobustError
        ``error`` if the file is a pickle, not an ``.npz``, corrupt, or holds an
        object array (which only pickle could read).
    """
    refuse_pickle(path, what, error, fix)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise error(f"{what} {path} is a single .npy array, not an .npz archive; {fix}")
        with archive:
            return {key: _read_member(archive, key, path, what, error, fix) for key in archive.files}
    except GluonRobustError:
        raise
    except _NPZ_ERRORS as err:
        raise error(f"cannot read {what} {path}: not a readable .npz archive ({_first_line(err)}); {fix}") from None


def _read_member(archive: np.lib.npyio.NpzFile, key: str, path: str | os.PathLike, what: str,
                 error: Type[GluonRobustError], fix: str) -> np.ndarray:
    """One array of ``archive``; an object array (which only pickle could read) raises ``error``."""
    try:
        return archive[key]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise error(f"{what} {path} holds an object array {key!r}, which only pickle can read (and unpickling "
                        f"can run code); {fix}") from None
        raise


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """Hex SHA-256 over named arrays: their names, dtypes, shapes and bytes, in name order.

    Parameters
    ----------
    arrays : mapping of str to numpy.ndarray
        Numeric or string arrays (no object arrays).

    Returns
    -------
    str
        The digest; any change of a name, dtype, shape or value changes it.
    """
    digest = hashlib.sha256()
    for key in sorted(arrays):
        value = np.asarray(arrays[key])
        header = json.dumps([key, value.dtype.str, list(value.shape)])
        digest.update(len(header).to_bytes(8, "little") + header.encode("utf-8"))
        data = value.tobytes(order="C")
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def write_manifest(path: str | os.PathLike, files: Iterable[str | os.PathLike]) -> Dict[str, str]:
    """Write the SHA-256 of ``files`` to the JSON manifest ``path``, atomically.

    Parameters
    ----------
    path : str or path
        The manifest to write.
    files : iterable of str or path
        Files in the manifest's directory.

    Returns
    -------
    dict of str to str
        The digests by file name, as written.
    """
    path = Path(path)
    digests: Dict[str, str] = {}
    for file in map(Path, files):
        if file.parent.resolve() != path.parent.resolve():
            raise ValueError(f"{file} is not in the manifest's directory {path.parent}")
        digests[file.name] = sha256_of(file)
    atomic_write_json(path, {"format": MANIFEST_FORMAT, "sha256": digests})
    return digests


def verify_manifest(path: str | os.PathLike, expected: Iterable[str], what: str, fix: str) -> Dict[str, Path]:
    """Check the files a manifest lists before anything reads them.

    Every name in ``expected`` must be listed, exist beside the manifest, not
    be a pickle, and have the recorded SHA-256.

    Parameters
    ----------
    path : str or path
        The manifest written by :func:`write_manifest`.
    expected : iterable of str
        The file names the manifest must cover.
    what : str
        What the set of files is, for messages (``"checkpoint 12 in runs/x"``).
    fix : str
        What the user should do, appended to every message.

    Returns
    -------
    dict of str to path
        The verified files by name.

    Raises
    ------
    ConfigError
        A missing or unreadable manifest, or a file that is missing, a pickle,
        or whose checksum differs.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} has no manifest {path.name}; {fix}")
    refuse_pickle(path, f"{what} manifest", fix=fix)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        digests = manifest["sha256"] if manifest.get("format") == MANIFEST_FORMAT else None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, KeyError, TypeError) as err:
        raise ConfigError(f"manifest {path} of {what} is unreadable ({_first_line(err)}); {fix}") from None
    if not isinstance(digests, dict):
        raise ConfigError(f"manifest {path} of {what} is not a {MANIFEST_FORMAT} manifest; {fix}")
    verified: Dict[str, Path] = {}
    for name in expected:
        file = path.parent / name
        if name not in digests:
            raise ConfigError(f"manifest {path} of {what} does not list {name}; {fix}")
        if not file.is_file():
            raise ConfigError(f"{what} lacks {file.name} (listed in {path.name}); {fix}")
        refuse_pickle(file, what, fix=fix)
        if sha256_of(file) != digests[name]:
            raise ConfigError(f"{file} does not match the SHA-256 in {path.name} (corrupt or modified); {fix}")
        verified[name] = file
    return verified


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

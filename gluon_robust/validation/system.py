"""Checks of the environment: files and directories, devices and hosts.

Each raises an :class:`~gluon_robust.validation.InvalidValue` naming the
parameter and the value before any work starts.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .values import InvalidValue

__all__ = ["same_path", "check_file_name", "check_out_dir", "check_distinct_paths", "check_contexts", "check_host"]

# ------------------------------------------------------------------ files and directories
def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two spellings name the same file or directory (``runs/x``, ``./runs/x/``, an absolute path)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return os.path.samefile(pa, pb)
    return pa.resolve() == pb.resolve()


def check_file_name(name: str, value: Any) -> str:
    """A plain file name: no directory part, not ``.`` or ``..``, no NUL; refuses ``--name ../../x``."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidValue(name, value, "a non-empty file name")
    if value in (".", "..") or "/" in value or "\\" in value or "\0" in value or os.sep in value:
        raise InvalidValue(name, value, "a plain file name without a directory part")
    return value


def check_out_dir(name: str, value: Any) -> Path:
    """An output directory that exists and is writable, or can be created.

    Checked before any work starts, so a run never fails after its first
    epoch for want of a place to write. Nothing is created: the directory is
    made when the first output is written.

    Raises
    ------
    InvalidValue
        For an empty path, an existing file, a path under a file, or a
        directory this process cannot write to.
    """
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise InvalidValue(name, value, "a directory path")
    if "\0" in str(value):
        raise InvalidValue(name, value, "a path without NUL characters")
    path = Path(value).expanduser()
    too_long = [part for part in path.parts if len(os.fsencode(part)) > _NAME_MAX]
    if too_long:
        raise InvalidValue(name, str(value), f"a path whose names have at most {_NAME_MAX} bytes")
    try:
        if path.exists() and not path.is_dir():
            raise InvalidValue(name, str(value), "a directory, not an existing file")
        probe = path
        while not probe.exists():  # the first existing ancestor must be a writable directory
            if probe.parent == probe:
                break
            probe = probe.parent
        is_dir = probe.is_dir()
    except OSError as err:  # e.g. a path too long as a whole, or a component that cannot be searched
        raise InvalidValue(name, str(value), f"a usable directory path ({err.strerror or err})") from None
    if not is_dir:
        raise InvalidValue(name, str(value), f"a directory, but {probe} is a file")
    if not _writable(probe):
        raise InvalidValue(name, str(value), f"writable, but {probe} is not writable")
    return path


#: The longest file name (in bytes) most file systems accept.
_NAME_MAX = 255


def _writable(directory: Path) -> bool:
    """Whether a file can be created in ``directory`` (tried for real: access() lies to root on read-only mounts)."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".gluon-robust-probe-"):
            return True
    except OSError:
        return False


def check_distinct_paths(name: str, value: Any, others: Sequence[str | os.PathLike], what: str) -> None:
    """Refuse ``value`` when it names the same path as one of ``others`` (e.g. an output equal to an input)."""
    for other in others:
        if same_path(value, other):
            raise InvalidValue(name, str(value), f"different from every {what} ({other})")


# ------------------------------------------------------------------ devices
def check_contexts(name: str, contexts: Sequence[Any], *, multiple: bool = True) -> list:
    """Devices that exist, and at most one unless the caller can use several.

    Parameters
    ----------
    name : str
        The parameter (``ctx``).
    contexts : sequence of mxnet.Context
        Parsed devices.
    multiple : bool
        Whether the caller uses every device (data parallel); when False a list
        of two or more is refused rather than silently reduced to its first.
    """
    import mxnet as mx

    contexts = list(contexts)
    shown = ",".join(f"{c.device_type}:{c.device_id}" for c in contexts)
    if not contexts:
        raise InvalidValue(name, shown, "one or more devices such as cpu or gpu:0")
    if len(set(contexts)) != len(contexts):
        raise InvalidValue(name, shown, "a list without repeated devices")
    if not multiple and len(contexts) > 1:
        raise InvalidValue(name, shown, "a single device for this command (only train uses several)")
    gpus = [c for c in contexts if c.device_type == "gpu"]
    if gpus:
        available = _num_gpus(mx)
        missing = [c for c in gpus if c.device_id >= available]
        if missing:
            have = "no GPU" if available == 0 else f"GPUs 0..{available - 1}"
            raise InvalidValue(name, shown, f"a device of this machine ({have}; gpu:{missing[0].device_id} does not exist)")
    return contexts


def _num_gpus(mx: Any) -> int:
    """GPUs MXNet can use here (0 for a CPU build)."""
    try:
        return int(mx.context.num_gpus())
    except mx.base.MXNetError:
        return 0


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def check_host(name: str, value: Any) -> str:
    """An address of this machine that a server can listen on (``127.0.0.1``, ``0.0.0.0``, a local name).

    The spelling is checked first (an IP address or an RFC 1123 host name),
    then a socket is bound to it on a free port, so a typo or another
    machine's address fails here rather than after the job has started.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidValue(name, value, "a host name or IP address")
    host = value.strip()
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        if not _HOSTNAME.match(host):
            raise InvalidValue(name, value, "a host name or IP address") from None
        family = socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
    except (OSError, UnicodeError) as err:
        raise InvalidValue(name, value, f"an address of this machine to listen on ({err.strerror or err})") from None
    return host

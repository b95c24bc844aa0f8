"""A one-host launcher for MXNet parameter-server jobs: scheduler, servers and workers, stopped together.

Importing ``mxnet`` with ``DMLC_ROLE=server`` or ``scheduler`` runs that
role's loop and exits when the workers are done, so a server is simply
``python -c "import mxnet"``. :func:`launch` starts all of them on one host
(MXNet's own ``tools/launch.py`` needs the absent ``dmlc_tracker``), watches
every child, and on the first failure stops the whole job: ps-lite would
otherwise wait forever for a dead peer (Li et al., "Scaling Distributed Machine
Learning with the Parameter Server", OSDI 2014). Re-exported by
:mod:`gluon_robust.distributed`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import ConfigError, GluonRobustError
from .validation import check_host, check_int, check_positive

__all__ = ["launch", "JobFailed", "JobResult", "free_port", "dmlc_environment"]

logger = logging.getLogger("gluon_robust.distributed")


class JobFailed(GluonRobustError):
    """A process of a launched job failed (or the job ran out of time); the job has been stopped.

    Attributes
    ----------
    exit_code : int
        The status the launcher should exit with: the failed process's status,
        128 + signal for a killed one, 124 for a timeout.
    pids : list of int
        Every process the launcher started (all stopped by now).
    """

    def __init__(self, message: str, exit_code: int, pids: Sequence[int]) -> None:
        super().__init__(message)
        self.exit_code = int(exit_code)
        self.pids = list(pids)


@dataclass
class JobResult:
    """What :func:`launch` returns when every worker succeeded."""

    seconds: float
    pids: List[int] = field(default_factory=list)
    worker_pids: List[int] = field(default_factory=list)


@dataclass
class _Child:
    name: str
    role: str
    process: subprocess.Popen


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for the scheduler)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def dmlc_environment(role: str, *, num_workers: int, num_servers: int, host: str, port: int) -> Dict[str, str]:
    """The ``DMLC_*`` variables of one process of a job whose scheduler listens on ``host:port``."""
    if role not in ("scheduler", "server", "worker"):
        raise ConfigError(f"role must be scheduler, server or worker, got {role!r}")
    return {"DMLC_ROLE": role, "DMLC_PS_ROOT_URI": str(host), "DMLC_PS_ROOT_PORT": str(int(port)),
            "DMLC_NUM_SERVER": str(int(num_servers)), "DMLC_NUM_WORKER": str(int(num_workers))}


def _parent_death_signal() -> Optional[Callable[[], None]]:
    """On Linux, a ``preexec_fn`` that makes the child receive SIGTERM when the launcher dies
    (``PR_SET_PDEATHSIG``), so that no role outlives a killed launcher; None elsewhere.

    ``prctl`` is looked up here, in the parent: the child between fork and exec
    only calls it (no import, no allocation that could wait on another thread's lock).
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    request, sig = 1, int(signal.SIGTERM)  # PR_SET_PDEATHSIG

    def set_signal() -> None:
        prctl(request, sig)

    return set_signal


def _status_text(code: int) -> Tuple[str, int]:
    """A child's return code as words and as the launcher's exit status."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}", 128 - code
    return f"exited with status {code}", code


def _stop(children: Sequence[_Child], grace: float) -> None:
    """SIGTERM every child's process group, then SIGKILL what is left after ``grace`` seconds; reap them all."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        alive = [c for c in children if c.process.poll() is None]
        for child in alive:
            try:
                os.killpg(child.process.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while any(c.process.poll() is None for c in alive) and time.monotonic() < deadline:
            time.sleep(0.05)
    for child in children:  # reap
        try:
            child.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) did not stop", child.name, child.process.pid)


def launch(
    command: Sequence[str],
    *,
    num_workers: int,
    num_servers: int = 1,
    host: str = "127.0.0.1",
    port: Optional[int] = None,
    timeout: Optional[float] = None,
    grace: float = 5.0,
    env: Optional[Mapping[str, str]] = None,
    poll: float = 0.1,
) -> JobResult:
    """Run a parameter-server job on this host: a scheduler, ``num_servers`` servers and ``num_workers`` copies of ``command``.

    Every process gets the ``DMLC_*`` environment (:func:`dmlc_environment`)
    and its own process group. The launcher polls them all; the job succeeds
    when every worker exits with status 0 (the servers and the scheduler stop
    by themselves once rank 0 closes its store, or are stopped ``grace``
    seconds after the last worker). The first
    non-zero exit of any process, or the ``timeout``, stops every process
    group (SIGTERM, then SIGKILL after ``grace`` seconds) and raises
    :class:`JobFailed` naming the culprit, so a dead worker never leaves its
    peers blocked in ps-lite.

    Parameters
    ----------
    command : sequence of str
        The worker command, e.g. ``[sys.executable, "scripts/train_adversarial.py", "--kvstore", "dist_sync", ...]``.
    num_workers, num_servers : int
        Processes of each role (at least 1).
    host, port : str, int
        Where the scheduler listens (default: loopback and a free port).
    timeout : float, optional
        Seconds the whole job may take.
    grace : float
        Seconds between SIGTERM and SIGKILL when stopping.
    env : mapping, optional
        Extra environment for every process.
    poll : float
        Seconds between checks of the children.

    Returns
    -------
    JobResult

    Raises
    ------
    ConfigError
        Bad arguments (before anything starts).
    JobFailed
        A process failed or the job timed out; everything has been stopped.
    """
    command = [str(part) for part in command]
    host, port = _check_launch(command, num_workers, num_servers, host, port, timeout, grace)
    base = dict(os.environ)
    base.update(env or {})
    if host in ("127.0.0.1", "localhost"):
        base.setdefault("DMLC_NODE_HOST", "127.0.0.1")  # every role announces loopback: no network needed
    roles = ([("scheduler", "scheduler", [sys.executable, "-c", "import mxnet"])]
             + [(f"server #{i}", "server", [sys.executable, "-c", "import mxnet"]) for i in range(num_servers)]
             + [(f"worker #{i}", "worker", command) for i in range(num_workers)])
    children: List[_Child] = []
    started = time.monotonic()
    logger.info("launching %d worker(s) and %d server(s), scheduler at %s:%d: %s",
                num_workers, num_servers, host, port, " ".join(command))
    try:
        _start(children, roles, base, num_workers=num_workers, num_servers=num_servers, host=host, port=port)
        pids = [c.process.pid for c in children]
        workers = [c for c in children if c.role == "worker"]
        _watch(children, workers, pids, started, timeout=timeout, grace=grace, poll=poll,
               job=f"{num_workers} worker(s), {num_servers} server(s), scheduler")
    finally:
        _stop(children, grace)
    seconds = time.monotonic() - started
    logger.info("job finished in %.1f s", seconds)
    return JobResult(seconds=seconds, pids=pids, worker_pids=[c.process.pid for c in workers])


def _check_launch(command: Sequence[str], num_workers: Any, num_servers: Any, host: str, port: Optional[int],
                  timeout: Optional[float], grace: float) -> Tuple[str, int]:
    """Refuse bad :func:`launch` arguments before anything starts; the checked host and the port (a free one if None)."""
    if not command:
        raise ConfigError("launch needs a worker command after --")
    for name, value in (("num_workers", num_workers), ("num_servers", num_servers)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if timeout is not None:
        check_positive("timeout", timeout)
    check_positive("grace", grace, allow_zero=True)
    if port is not None:
        check_int("port", port, minimum=1, maximum=65535)
    host = check_host("host", host)
    return host, int(port) if port is not None else free_port(host)


def _start(children: List[_Child], roles: Sequence[Tuple[str, str, List[str]]], base: Dict[str, str], *,
           num_workers: int, num_servers: int, host: str, port: int) -> None:
    """Start every role, appending each to ``children`` as it starts (so that a failure stops those already up)."""
    preexec = _parent_death_signal()
    for name, role, argv in roles:
        child_env = dict(base, **dmlc_environment(role, num_workers=num_workers, num_servers=num_servers,
                                                   host=host, port=port))
        try:
            # A session of its own: stopping the job signals the whole process group of each child.
            process = subprocess.Popen(argv, env=child_env, start_new_session=True, preexec_fn=preexec)
        except OSError as err:
            raise JobFailed(f"cannot start {name} ({' '.join(argv)}): {err.strerror or err}", 127,
                            [c.process.pid for c in children]) from None
        children.append(_Child(name, role, process))
        logger.debug("%s: pid %d", name, process.pid)


def _watch(children: Sequence[_Child], workers: Sequence[_Child], pids: List[int], started: float, *,
           timeout: Optional[float], grace: float, poll: float, job: str) -> None:
    """Poll the children until every worker succeeded (and the rest stopped, or ``grace`` passed); JobFailed else."""
    finished_at: Optional[float] = None
    while True:
        for child in children:
            code = child.process.poll()
            if code is None or code == 0:
                continue
            what, status = _status_text(code)
            raise JobFailed(
                f"{child.name} (pid {child.process.pid}) {what} after {time.monotonic() - started:.1f} s; "
                f"stopped the job ({job})", status, pids)
        now = time.monotonic()
        if all(c.process.poll() == 0 for c in workers):
            finished_at = finished_at or now
            if all(c.process.poll() is not None for c in children) or now - finished_at > grace:
                break
        if timeout is not None and now - started > timeout:
            raise JobFailed(f"the job ran past its timeout of {timeout:g} s; stopped it ({job})", 124, pids)
        time.sleep(poll)

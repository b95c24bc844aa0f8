"""``gluon-robust launch``: run a parameter-server job (scheduler, servers, workers) on this host.

Thin: :func:`gluon_robust.distributed.launch` does the work. For example::

    gluon-robust launch -n 2 -s 1 -- python scripts/train_adversarial.py --config mnist_resnet20 --kvstore dist_sync

The first process to fail stops the whole job: the command prints one line
naming it and exits with its status (124 on ``--timeout``).
"""

from __future__ import annotations

import argparse
import json
import signal
from typing import List

from ..cli import command, emit
from ..errors import ConfigError

__all__ = ["configure_launch", "run_launch"]


def configure_launch(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``launch``."""
    parser.add_argument("-n", "--num-workers", type=int, required=True, help="worker processes (copies of COMMAND)")
    parser.add_argument("-s", "--num-servers", type=int, default=1, help="server processes (default 1)")
    parser.add_argument("--host", default="127.0.0.1", help="address the scheduler listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="scheduler port (default: a free one)")
    parser.add_argument("--timeout", type=float, help="stop the job (exit 124) after this many seconds")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL when stopping")
    parser.add_argument("worker_command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="the worker command, after --")


def _worker_command(parts: List[str]) -> List[str]:
    parts = list(parts)
    if parts and parts[0] == "--":
        parts = parts[1:]
    if not parts:
        raise ConfigError("launch needs a worker command after --, e.g. "
                          "gluon-robust launch -n 2 -- python scripts/train_adversarial.py --kvstore dist_sync ...")
    return parts


def _terminate(signum, frame):  # noqa: ARG001 -- signal handler signature
    raise KeyboardInterrupt


@command("launch", "Run a distributed (parameter-server) job on this host: scheduler, servers and workers.")(configure_launch)
def run_launch(args: argparse.Namespace) -> int:
    from ..distributed import launch

    worker_command = _worker_command(args.worker_command)
    previous = signal.signal(signal.SIGTERM, _terminate)  # a terminated launcher still stops its job
    try:  # a JobFailed reaches the CLI's one-line error, which exits with the job's status
        result = launch(worker_command, num_workers=args.num_workers, num_servers=args.num_servers, host=args.host,
                        port=args.port, timeout=args.timeout, grace=args.grace)
    finally:
        signal.signal(signal.SIGTERM, previous)
    emit(json.dumps({"workers": args.num_workers, "servers": args.num_servers, "seconds": round(result.seconds, 3)}))
    return 0

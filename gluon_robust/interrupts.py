"""SIGINT and SIGTERM as exceptions that stop a command at a safe point.

The command line (:func:`gluon_robust.cli.main`) installs :func:`handle_signals`
for the duration of a command: both signals then raise :class:`Interrupted`
(a :class:`KeyboardInterrupt`), which the CLI turns into one line on stderr and
the exit status ``128 + signal`` (130 for SIGINT, 143 for SIGTERM). Code whose
state must not be cut in half (a training step and its bookkeeping, the
publication of an output directory) runs inside :func:`deferred`: a signal that
arrives there is held until the block ends, so the exception is raised at a
point where the state is complete and can be saved. A second signal during the
same block raises at once (``forced``), for a step that never ends.

Code that knows what the interruption left behind sets :attr:`Interrupted.hint`
(e.g. "resume with the same command plus --resume"); the first hint set wins.
Without the CLI's handlers (library use) nothing changes: SIGINT raises a plain
KeyboardInterrupt wherever it lands and :func:`deferred` holds nothing.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any, Dict, Iterator, Optional, Type

__all__ = ["Interrupted", "handle_signals", "deferred", "interrupt_message", "set_hint"]

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM turned into an exception by :func:`handle_signals`.

    Attributes
    ----------
    signum : int
        The signal.
    forced : bool
        Raised inside a :func:`deferred` block (a repeated signal), so that block did not finish.
    hint : str or None
        What the interruption left behind and how to continue, for the user.
    """

    def __init__(self, signum: int, forced: bool = False) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.forced = bool(forced)
        self.hint: Optional[str] = None

    @property
    def signal_name(self) -> str:
        """``"SIGINT"`` or ``"SIGTERM"``."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's status for a process stopped by the signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


class _State:
    installed = False
    depth = 0
    pending: Optional[int] = None


def _handler(signum: int, frame: Optional[FrameType]) -> None:  # noqa: ARG001 -- signal handler signature
    if _State.depth > 0 and _State.pending is None:
        _State.pending = signum
        logger.warning("%s received: stopping at the end of the current step (send it again to stop now)",
                       signal.Signals(signum).name)
        return
    raise Interrupted(signum, forced=_State.depth > 0)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` inside the block; restore the old handlers after.

    Only the main thread can install signal handlers; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: Dict[int, Any] = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    for sig in _SIGNALS:
        signal.signal(sig, _handler)
    _State.installed, _State.pending = True, None
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        _State.installed, _State.pending = False, None


class deferred:  # noqa: N801 -- used like a function: ``with deferred():``
    """Hold SIGINT and SIGTERM until the block ends, then raise :class:`Interrupted`.

    Blocks nest; the held signal is raised when the outermost one ends
    normally. If the block raises an error of its own, that error wins and the
    held signal is dropped (the command is stopping anyway). Holds nothing
    unless :func:`handle_signals` is active.
    """

    def __enter__(self) -> "deferred":
        _State.depth += 1
        return self

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        _State.depth -= 1
        if _State.depth == 0 and _State.pending is not None:
            signum, _State.pending = _State.pending, None
            if kind is None:
                raise Interrupted(signum)


def set_hint(error: BaseException, hint: str) -> None:
    """Say what an :class:`Interrupted` left behind, unless code nearer to it already did."""
    if isinstance(error, Interrupted) and error.hint is None:
        error.hint = hint


def interrupt_message(error: BaseException) -> str:
    """The CLI's line for an interruption: ``interrupted by SIGTERM; <hint>``.

    Without a hint, the command was stopped before it wrote anything: outputs
    appear only at the end (:func:`~gluon_robust.reporting.staged_output`).
    """
    if not isinstance(error, Interrupted):
        return "interrupted"
    return f"interrupted by {error.signal_name}; {error.hint or 'nothing partial was published'}"

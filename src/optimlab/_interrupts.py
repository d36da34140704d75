"""Termination signals as exceptions, so that a long computation stops the way Ctrl-C stops it.

Python turns SIGINT into :class:`KeyboardInterrupt`; a process manager, a closed terminal or
``kill`` send SIGTERM or SIGHUP instead, which by default end the process on the spot: no
cleanup, worker processes left behind. Within :func:`interrupt_on_signals`, SIGTERM and SIGHUP
raise :class:`Interrupted` (a :class:`KeyboardInterrupt`) in the main thread instead, so every
``except KeyboardInterrupt`` / ``finally`` that cleans up after Ctrl-C (stop submitting work,
store what finished, stop the workers) runs for them too.

No torch and no lab here: the command line installs the handlers first thing, before it
parses its arguments.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

__all__ = ["TERMINATING", "Interrupted", "exit_status", "interrupt_on_signals", "signal_name"]

#: The signals :func:`interrupt_on_signals` turns into :class:`Interrupted` where they exist.
TERMINATING: tuple[str, ...] = ("SIGTERM", "SIGHUP")


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15, ``"signal 99"`` for a number with no name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(KeyboardInterrupt):
    """A termination signal arrived (raised in the main thread by the handler of
    :func:`interrupt_on_signals`); ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal_name(signum)}")
        self.signum = signum


def exit_status(error: KeyboardInterrupt) -> int:
    """The shell's exit status for a process ended by this interrupt: ``128 + signal number``
    (130 for Ctrl-C / SIGINT, 143 for SIGTERM, 129 for SIGHUP)."""
    signum = error.signum if isinstance(error, Interrupted) else int(signal.SIGINT)
    return 128 + signum


@contextlib.contextmanager
def interrupt_on_signals(names: Sequence[str] = TERMINATING) -> Iterator[None]:
    """Within the block, the named signals raise :class:`Interrupted` in the main thread.

    Only the first signal raises: repeats (a second SIGTERM while the first is being handled)
    are ignored so that the cleanup they would interrupt can finish; SIGKILL remains the way
    to end the process at once. The previous handlers are restored on exit. Outside the main
    thread (where Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if raised:
            return
        raised = True
        raise Interrupted(signum)

    previous: dict[signal.Signals, object] = {}
    for name in names:
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]

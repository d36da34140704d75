"""A small progress bar for long work, on stderr (no dependency).

On a terminal it redraws one line; elsewhere (CI logs, pipes) it prints a line at most every
few seconds and at the end, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``done/total`` with a bar, elapsed time, an estimate of the time left and a note.

    Args:
        total: number of items.
        what: what is counted ("runs").
        stream: where to write (stderr by default).
        every: seconds between lines when the stream is not a terminal.
    """

    def __init__(self, total: int, what: str = "runs", stream: TextIO | None = None,
                 every: float = 5.0, start: int = 0) -> None:
        self.total = max(int(total), 0)
        self.what = what
        self.stream = stream or sys.stderr
        self.every = every
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self.start = start
        self.done = start
        self._last = -1e9

    def update(self, done: int, note: str = "") -> None:
        """Show ``done`` items finished; ``note`` describes the last one."""
        self.done = done
        now = time.perf_counter()
        final = done >= self.total
        if not self.tty and not final and now - self._last < self.every:
            return
        self._last = now
        elapsed = now - self.t0
        new = done - self.start
        left = (self.total - done) * elapsed / new if new > 0 else float("nan")
        width = 24
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        eta = _clock(left) if left == left else "?"
        line = (f"[{bar}] {done}/{self.total} {self.what}  {_clock(elapsed)} elapsed, "
                f"{eta} left  {note}")
        if self.tty:
            cols = 120
            self.stream.write("\r" + line[:cols].ljust(cols))
            if final:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (e.g. the report's sections)."""
        if self.tty:
            self.stream.write("\r" + " " * 120 + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()

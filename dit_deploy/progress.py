"""One progress style for long work: a live bar on a terminal, periodic plain lines elsewhere.

Logs (CI, ``| tee``, a server's journal) get ``label: 12/64 (19%) 3.1 s`` lines at most every
``interval`` seconds and once at the end, never carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``with Progress("calibrate", total=64) as bar: bar.update(1)``; ``bar.describe(text)``.

    ``total=0``: open-ended work, shown as what is happening and the time spent.
    """

    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO | None = None,
        interval: float = 10.0,
        enabled: bool = True,
    ) -> None:
        self.label, self.total, self.done = label, max(int(total), 0), 0
        self.stream = stream or sys.stderr
        self.interval, self.enabled = interval, enabled
        self.tty = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.detail = ""
        self._start = self._last = time.monotonic()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self, final: bool = False) -> str:
        detail = f" {self.detail}" if self.detail else ""
        elapsed = time.monotonic() - self._start
        if final and not self.tty:  # a log already has the last detail: say it ended
            count = f" {self.done}/{self.total}" if self.total else ""
            return f"{self.label}: done{count} in {elapsed:.1f} s"
        if not self.total:  # open-ended work: what is happening and for how long
            return f"{self.label}:{detail} {elapsed:.1f} s"
        pct = f" ({100 * self.done // self.total}%)"
        return f"{self.label}: {self.done}/{self.total}{pct}{detail} {elapsed:.1f} s"

    def _emit(self, final: bool = False) -> None:
        if not self.enabled:
            return
        if self.tty:
            end = "\n" if final else ""
            self.stream.write("\r\x1b[2K" + self._line() + end)
            self.stream.flush()
            return
        now = time.monotonic()
        if final or now - self._last >= self.interval:
            self.stream.write(self._line(final) + "\n")
            self.stream.flush()
            self._last = now

    def describe(self, detail: str) -> None:
        """What is being worked on now (shown with the count)."""
        self.detail = detail
        self._emit()

    def update(self, n: int = 1) -> None:
        self.done += n
        self._emit()

    def close(self) -> None:
        self._emit(final=True)
        self.enabled = False

"""A one-line progress bar on stderr, shown only for work that turns out to be slow.

On a terminal the bar redraws in place; into a log file or a pipe (no terminal) it would write one
carriage-returned line per step, so there the work gets one line when it ends, and only if slow.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_SHOW_AFTER_S = 1.5


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self.stream = stream or sys.stderr
        self.start_s = time.monotonic()
        self.shown = False
        self._redraw = self.stream.isatty()

    def advance(self, count: int = 1) -> None:
        self.done += count
        elapsed_s = time.monotonic() - self.start_s
        if self._redraw and elapsed_s >= _SHOW_AFTER_S:
            self.shown = True
            width = 30
            filled = width * self.done // self.total
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.done}/{self.total} {elapsed_s:.1f}s")
            self.stream.flush()

    def close(self) -> None:
        elapsed_s = time.monotonic() - self.start_s
        if self.shown:
            self.stream.write("\n")
        elif not self._redraw and elapsed_s >= _SHOW_AFTER_S:
            self.stream.write(f"{self.label}: {self.done}/{self.total} in {elapsed_s:.1f}s\n")
            self.stream.flush()

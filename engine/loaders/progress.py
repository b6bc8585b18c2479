"""A one-line progress bar on stderr, shown only for work that turns out to be slow."""

from __future__ import annotations

import sys
import time

_SHOW_AFTER_S = 1.5


class Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self.start_s = time.monotonic()
        self.shown = False

    def advance(self, count: int = 1) -> None:
        self.done += count
        elapsed_s = time.monotonic() - self.start_s
        if elapsed_s >= _SHOW_AFTER_S:
            self.shown = True
            width = 30
            filled = width * self.done // self.total
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                             f"{self.done}/{self.total} {elapsed_s:.1f}s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")

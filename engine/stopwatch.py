"""Timing a piece of work on a shared, noisy machine: the best of a few runs after a warm-up."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(run: Callable[[], object], repeats: int = 3) -> float:
    """Seconds of the fastest of `repeats` calls of `run`, after one untimed call (first calls
    allocate, page weights in and load code)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best

"""Keeps the engine's heartbeat going while a long step runs.

Workers take an engine that has said nothing for a few seconds for dead, and one step (a large
prefill of a big model on a CPU) can take longer than that. A daemon thread calls `beat` every
interval while a step is running; torch releases the GIL in its kernels, so the thread gets to run.

ZeroMQ sockets are not thread-safe: the engine loop holds `lock` whenever it touches its sockets
and releases it only inside `stepping()`, around the step itself, which touches none.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


class StepHeartbeat:
    def __init__(self, interval_s: float, beat: Callable[[], None]) -> None:
        self.lock = threading.Lock()
        self.interval_s = interval_s
        self._beat = beat
        self._in_step = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forge-heartbeat", daemon=True)

    def start(self) -> None:
        """Take the socket lock for the calling (loop) thread and start beating."""
        self.lock.acquire()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        self.lock.release()

    @contextlib.contextmanager
    def stepping(self) -> Iterator[None]:
        """Around one step: the sockets are the heartbeat thread's until the step returns."""
        self._in_step.set()
        self.lock.release()
        try:
            yield
        finally:
            self.lock.acquire()
            self._in_step.clear()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s / 4):
            if not self._in_step.is_set():
                continue
            with self.lock:
                if self._in_step.is_set():  # the step may have ended while we waited for the lock
                    self._beat()

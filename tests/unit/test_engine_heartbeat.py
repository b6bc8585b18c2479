"""The engine keeps beating while one step runs longer than the workers' silence limit."""

from __future__ import annotations

import tempfile
import threading
import time
import types

import zmq

from engine.process.loop import STATS_INTERVAL_S, EngineLoop
from engine.step_output import StepOutput
from frontend.tokenizer_worker import ENGINE_SILENCE_S
from shared import ipc
from shared.messages import EngineReady, EngineStats, FromEngine, Hello, Shutdown

STEP_S = ENGINE_SILENCE_S + 1.0  # longer than a worker waits before declaring the engine dead


class SlowCore:
    """An engine core with one step that takes STEP_S (the scheduler fields feed the stats)."""

    def __init__(self) -> None:
        self.armed = threading.Event()  # work arrives once the worker has registered
        self.steps_left = 1
        self.step_window: tuple[float, float] | None = None
        self.scheduler = types.SimpleNamespace(running=[], waiting=[], block_manager=types.SimpleNamespace(usage=0.0),
                                               num_cache_queries=0, num_cache_hits=0, num_preemptions=0, drafter=None)

    def has_work(self) -> bool:
        return self.armed.is_set() and self.steps_left > 0

    def step(self) -> StepOutput:
        start = time.monotonic()
        time.sleep(STEP_S)  # like a torch kernel, sleep releases the GIL
        self.steps_left -= 1
        self.step_window = (start, time.monotonic())
        return StepOutput.empty()


def test_stats_keep_coming_during_a_step_longer_than_the_silence_limit():
    run_dir = tempfile.mkdtemp(prefix="forge-test-")
    router, pull = f"ipc://{run_dir}/engine", f"ipc://{run_dir}/engine-pull"
    core = SlowCore()
    ready = EngineReady("m", 16, 10, 128, "{}", None, None, None)
    loop = EngineLoop(core, ready, pull, router)
    engine_thread = threading.Thread(target=loop.run)
    engine_thread.start()
    context = zmq.Context()
    try:
        worker = ipc.Inbox(ipc.make_socket(context, zmq.DEALER, router, False, ipc.identity_of(7)), FromEngine)
        ipc.send(worker.socket, Hello(7, "worker"))
        stats_at: list[float] = []
        deadline = time.monotonic() + STEP_S + 3 * STATS_INTERVAL_S
        while time.monotonic() < deadline and (core.step_window is None  # until just after the step
                                               or time.monotonic() < core.step_window[1] + 0.3):
            if worker.socket.poll(100):
                _, message = worker.recv()
                if isinstance(message, EngineReady):
                    core.armed.set()
                elif isinstance(message, EngineStats):
                    stats_at.append(time.monotonic())
        start, end = core.step_window
        during = [t for t in stats_at if start < t < end]
        assert len(during) >= int(STEP_S / STATS_INTERVAL_S) - 1, (stats_at, core.step_window)
        gaps = [b - a for a, b in zip([start, *during], [*during, end])]
        assert max(gaps) < ENGINE_SILENCE_S, gaps
        to_engine = ipc.make_socket(context, zmq.PUSH, pull, False)
        ipc.send(to_engine, Shutdown())
        engine_thread.join(10)
        assert not engine_thread.is_alive()
    finally:
        context.destroy(linger=0)

"""The engine dies (kill -9): `forge serve` starts another, or the operator does for a split stack;
the workers replay their in-flight requests to it as continuations, so every stream completes with
the text it would have had (greedy, float32), after a pause during which /health answers 503."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
import time

import openai
import psutil
import pytest

from tests.e2e.conftest import MODEL, STALL_TIMEOUT_S
from tests.e2e.stack import HttpProbe, Stack, forge, free_port

PROMPTS = [f"Write one sentence about the number {i}." for i in range(16)]
GREEDY = {"max_tokens": 32, "temperature": 0.0, "extra_body": {"ignore_eos": True}}


def _engine_of(launcher_pid: int) -> psutil.Process:
    engines = [p for p in psutil.Process(launcher_pid).children(recursive=True)
               if "engine" in " ".join(p.cmdline())]
    assert len(engines) == 1, engines
    return engines[0]


def _reference(client: openai.OpenAI) -> list[str]:
    """Each prompt's greedy text, from one batched request before any fault."""
    answer = client.completions.create(model=MODEL, prompt=PROMPTS, **GREEDY)
    return [choice.text for choice in sorted(answer.choices, key=lambda c: c.index)]


def _health(probe: HttpProbe) -> int:
    """/health's status, 0 while nothing answers."""
    try:
        return probe.get("/health")[0]
    except OSError:
        return 0


class HealthLog:
    """/health polled in the background: the statuses seen, in order."""

    def __init__(self, probe: HttpProbe) -> None:
        self.probe, self.seen, self.stopped = probe, [], threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stopped.is_set():
            self.seen.append(_health(self.probe))
            time.sleep(0.1)

    def stop(self) -> list[int]:
        self.stopped.set()
        self.thread.join()
        return self.seen


async def _streams_through_a_kill(url: str, prompts: list[str], kill) -> list[str]:
    """Stream every prompt; once each has its first chunk, call `kill`; the texts they end with."""
    started = [asyncio.Event() for _ in prompts]

    async def one(client: openai.AsyncOpenAI, i: int) -> str:
        stream = await client.completions.create(model=MODEL, prompt=prompts[i], stream=True, **GREEDY)
        text = ""
        async for chunk in stream:
            text += chunk.choices[0].text
            started[i].set()
        return text

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=180) as client:
        tasks = [asyncio.create_task(one(client, i)) for i in range(len(prompts))]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), timeout=120)
        kill()
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout=180)


def test_a_killed_engine_is_restarted_and_16_streams_complete_with_their_text(stack, client):
    reference = _reference(client)
    engine = _engine_of(stack.process.pid)
    health = HealthLog(stack)
    texts = asyncio.run(_streams_through_a_kill(stack.url, PROMPTS, lambda: engine.send_signal(signal.SIGKILL)))
    assert stack.wait_for(lambda: _health(stack) == 200, timeout_s=60)
    seen = health.stop()
    assert texts == reference
    assert _engine_of(stack.process.pid).pid != engine.pid
    assert 503 in seen, "/health never said the engine was gone"
    assert stack.wait_for(lambda: stack.metric("forge:num_requests_running") == 0, timeout_s=5)


def test_a_stopped_engine_is_killed_after_the_stall_timeout_and_its_streams_complete(stack, client):
    """SIGSTOP: the engine is alive but silent. /health turns 503 within seconds, the heartbeat age
    in /metrics grows, and past the stall timeout `forge serve` kills and replaces it."""
    reference = _reference(client)[:4]
    engine = _engine_of(stack.process.pid)

    def stop_engine() -> None:
        engine.send_signal(signal.SIGSTOP)
        assert stack.wait_for(lambda: _health(stack) == 503, timeout_s=STALL_TIMEOUT_S)
        assert stack.metric("forge:engine_heartbeat_age_seconds") >= 2

    texts = asyncio.run(_streams_through_a_kill(stack.url, PROMPTS[:4], stop_engine))
    assert texts == reference
    assert not psutil.pid_exists(engine.pid) or engine.status() == psutil.STATUS_ZOMBIE
    assert stack.wait_for(lambda: _health(stack) == 200, timeout_s=30)


def test_a_split_stack_picks_up_an_engine_restarted_by_hand():
    """forge engine / frontend / worker run apart: while the engine is down, /health and new
    requests answer 503 with Retry-After; a new engine on the same address takes the replays."""
    engine_address, port = f"tcp://127.0.0.1:{free_port(2)}", free_port()
    worker_address = f"tcp://127.0.0.1:{free_port()}"
    engine_args = ("engine", "--engine", engine_address, "--served-model-name", MODEL, "--dtype", "float32")
    engine = forge(*engine_args)
    processes = [engine, forge("frontend", "--port", str(port), "--worker-address", worker_address),
                 forge("worker", "--frontend", worker_address, "--engine", engine_address)]
    probe = HttpProbe(f"http://127.0.0.1:{port}")
    try:
        assert probe.wait_for(lambda: _health(probe) == 200, timeout_s=120)
        client = openai.OpenAI(base_url=probe.url + "/v1", api_key="x", max_retries=0, timeout=60)
        reference = _reference(client)[:2]

        def kill_and_check_refusals() -> None:
            engine.send_signal(signal.SIGKILL)
            assert probe.wait_for(lambda: _health(probe) == 503, timeout_s=15)
            try:
                client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
                raise AssertionError("a request was accepted with no engine")
            except openai.APIStatusError as exc:
                assert exc.status_code == 503 and int(exc.response.headers["retry-after"]) > 0
            processes.append(forge(*engine_args))

        texts = asyncio.run(_streams_through_a_kill(probe.url, PROMPTS[:2], kill_and_check_refusals))
        assert texts == reference
        assert probe.wait_for(lambda: _health(probe) == 200, timeout_s=30)
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_past_the_restart_budget_the_stream_ends_with_the_reason_and_the_server_exits_1(tmp_path, gguf_path):
    """The engine keeps dying: its model file is gone, so every restart fails while loading. After
    the budget of restarts (3 in 5 minutes) the stream in flight ends with an error event saying
    why, and `forge serve` exits 1, for a supervisor to see."""
    model = tmp_path / "model.gguf"
    shutil.copyfile(gguf_path, model)
    stack = Stack(str(model), "--dtype", "float32", "--served-model-name", MODEL)
    try:
        client = openai.OpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0, timeout=120)
        stream = client.completions.create(model=MODEL, prompt="A long story:", max_tokens=2000, stream=True,
                                           extra_body={"ignore_eos": True})
        next(iter(stream))
        model.unlink()
        _engine_of(stack.process.pid).send_signal(signal.SIGKILL)
        with pytest.raises(openai.APIError, match="kept crashing"):
            for _ in stream:
                pass
        assert stack.process.wait(60) == 1
    finally:
        if stack.process.poll() is None:
            stack.process.kill()
            stack.process.wait()

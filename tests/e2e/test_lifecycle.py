"""Start-up and shutdown: no orphans, no hangs, one clear line for a bad start."""

from __future__ import annotations

import signal
import subprocess
import time

import openai
import psutil
import pytest
import zmq

from tests.e2e.conftest import MODEL
from tests.e2e.stack import Stack, forge, free_port


def _children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _all_gone(processes: list[psutil.Process], timeout_s: float) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    return not alive


def test_sigterm_aborts_in_flight_requests_and_stops_every_child():
    stack = Stack("--workers", "2", "--log-level", "info")
    children = _children(stack.process.pid)
    assert len(children) == 3  # engine and two workers
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0, timeout=60)
    stream = client.completions.create(model=MODEL, prompt="A long story:", max_tokens=2000, stream=True,
                                       extra_body={"ignore_eos": True})
    next(iter(stream))
    stack.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    with pytest.raises(openai.APIError, match="shutting down"):  # an error event, not a cut stream
        for _ in stream:
            pass
    assert time.monotonic() - signalled < 5.0 + 2.0  # the drain time (5 s), then the error at once
    assert stack.process.wait(20) == 0
    assert _all_gone(children, timeout_s=10), "a child outlived the launcher"


def test_children_die_with_a_killed_launcher():
    """Killed while its engine still loads (the children exist from the start): none outlives it,
    and the engine does not go on loading a model for nobody."""
    launcher = forge("serve", "--port", str(free_port()))
    deadline = time.monotonic() + 60
    while len(_children(launcher.pid)) < 2 and time.monotonic() < deadline:  # the engine and a worker
        time.sleep(0.05)
    children = _children(launcher.pid)
    assert len(children) >= 2
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    assert _all_gone(children, timeout_s=10), "children were orphaned"


def test_a_taken_address_is_one_clear_line_and_exit_2():
    port = free_port()
    holder = zmq.Context.instance().socket(zmq.PULL)
    holder.bind(f"tcp://127.0.0.1:{port}")
    try:
        frontend = forge("frontend", "--port", str(free_port()), "--worker-address", f"tcp://127.0.0.1:{port}",
                         stderr=subprocess.PIPE, text=True)
        _, stderr = frontend.communicate(timeout=60)
    finally:
        holder.close(linger=0)
    assert frontend.returncode == 2
    assert stderr.strip() == f"forge: error: cannot bind tcp://127.0.0.1:{port}: Address already in use"

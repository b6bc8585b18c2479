"""Disconnects, overload, and workers attached and killed at run time."""

from __future__ import annotations

import asyncio
import signal
import time

import openai

from tests.e2e.conftest import MODEL
from tests.e2e.stack import Stack, forge

LONG = {"max_tokens": 400, "extra_body": {"ignore_eos": True}}


def _idle(stack: Stack) -> bool:
    return (stack.metric("forge:num_requests_running") == 0 and stack.metric("forge:num_requests_waiting") == 0
            and stack.metric("forge:kv_cache_usage_perc") == 0)


def test_a_client_that_disconnects_mid_stream_is_aborted_within_a_second(stack, client):
    stream = client.completions.create(model=MODEL, prompt="Tell me a long story.", stream=True, **LONG)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert stack.metric("forge:num_requests_running") == 1
    stream.close()
    left = time.monotonic()
    assert stack.wait_for(lambda: _idle(stack), timeout_s=1.0), "the request kept running after the client left"
    assert time.monotonic() - left <= 1.0


def test_200_concurrent_streams_against_a_queue_of_50_all_end(stack):
    """The stack runs 128 requests and queues 50 more: the rest get 429 at once, none hangs."""
    async def one(client: openai.AsyncOpenAI, i: int) -> str:
        try:
            stream = await client.completions.create(model=MODEL, prompt=f"Count to {i}:", max_tokens=4,
                                                     stream=True, extra_body={"ignore_eos": True})
            text = "".join([c.choices[0].text async for c in stream])
            return "ok" if text else "empty"
        except openai.RateLimitError:
            return "429"

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0,
                                      timeout=300) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(200))), timeout=600)

    outcomes = asyncio.run(run())
    assert set(outcomes) <= {"ok", "429"}
    assert outcomes.count("429") >= 200 - 178 and outcomes.count("ok") >= 100
    assert stack.wait_for(lambda: _idle(stack), timeout_s=3.0)


def test_a_worker_killed_mid_stream_hands_its_requests_to_the_other_with_the_same_text(stack):
    """A second worker attached at run time takes requests; killed mid-stream, its requests move to
    worker 1 and end with the text they would have had (float32 stack: replayed greedy text is equal)."""
    extra = forge("worker", "--frontend", stack.worker_address, "--engine", stack.engine_address,
                  "--worker-id", "77")
    try:
        assert stack.wait_for(lambda: stack.metric("forge:tokenizer_workers") == 2, timeout_s=30)
        client = openai.OpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0, timeout=60)
        greedy = {"max_tokens": 40, "temperature": 0.0, "extra_body": {"ignore_eos": True}}
        prompts = [f"Story {i}: once upon a time" for i in range(4)]
        answer = client.completions.create(model=MODEL, prompt=prompts, **greedy)  # spread over both workers
        reference = [choice.text for choice in sorted(answer.choices, key=lambda c: c.index)]
        assert stack.metric('forge:worker_requests_total{worker="1"}') >= 1
        assert stack.metric('forge:worker_requests_total{worker="77"}') >= 1

        streams = [iter(client.completions.create(model=MODEL, prompt=p, stream=True, **greedy))
                   for p in prompts]  # spread over both workers
        texts = [next(s).choices[0].text for s in streams]
        extra.send_signal(signal.SIGKILL)
        texts = [text + "".join(c.choices[0].text for c in s) for text, s in zip(texts, streams)]
        assert texts == reference
        assert stack.metric("forge:tokenizer_workers") == 1
        assert stack.wait_for(lambda: _idle(stack), timeout_s=3.0), "the dead worker's KV blocks were not freed"
    finally:
        extra.kill()
        extra.wait()


def test_a_tokenize_call_to_a_worker_that_goes_silent_fails_fast(stack):
    """The frontend drops a silent worker after 3 s; a /tokenize waiting on it gets 503 then,
    not after its own 30 s timeout."""
    stack.post("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 1})  # worker 1 has served
    extra = forge("worker", "--frontend", stack.worker_address, "--engine", stack.engine_address,
                  "--worker-id", "78")
    try:
        assert stack.wait_for(lambda: stack.metric("forge:tokenizer_workers") == 2, timeout_s=30)
        extra.send_signal(signal.SIGSTOP)  # connected but silent: the least-loaded worker, asked next
        status, body = stack.post("/tokenize", {"model": MODEL, "prompt": "Hello there"}, timeout_s=15)
        assert status == 503 and "worker" in body["error"]["message"], body
        assert stack.metric("forge:tokenizer_workers") == 1
        status, body = stack.post("/tokenize", {"model": MODEL, "prompt": "Hello there"}, timeout_s=15)
        assert status == 200 and body["count"] == len(body["tokens"]) > 0
    finally:
        extra.kill()
        extra.wait()


def test_a_request_past_its_timeout_ends_with_its_text_so_far_and_is_freed(stack, client):
    timeout = {"max_tokens": 3000, "extra_body": {"ignore_eos": True, "request_timeout": 1.0}}
    started = time.monotonic()
    answer = client.completions.create(model=MODEL, prompt="Tell me a long story.", **timeout)
    took = time.monotonic() - started
    choice = answer.choices[0]
    assert choice.finish_reason == "timeout" and choice.text and answer.usage.completion_tokens > 0
    assert 1.0 <= took < 3.0, took
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A story?"}],
                                            stream=True, **timeout)
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "timeout"
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    assert stack.wait_for(lambda: _idle(stack), timeout_s=3.0), "a timed-out request kept its KV blocks"

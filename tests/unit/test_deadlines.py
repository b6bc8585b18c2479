"""Deadlines in the frontend: a request past its timeout ends with TIMEOUT and keeps its counts;
one with no token past the queue wait ends with 503; each is ended once."""

from __future__ import annotations

import asyncio

from frontend.client import EngineClient
from frontend.request_stream import RequestStream, StreamEvent
from frontend.worker_view import Worker
from shared.messages import GenerateRequest
from shared.sampling import FinishReason, SamplingParams


def _client() -> EngineClient:
    return EngineClient("ipc://unused", max_in_flight=8, max_queue_wait_s=2.0)


def _stream(client: EngineClient, rid: int, deadline_s: float | None, first_token_deadline_s: float | None,
            latest: StreamEvent | None = None) -> RequestStream:
    worker = Worker(1, b"w1", "m", 128, last_seen_s=0.0)  # not in client.workers: aborts send nothing
    stream = RequestStream(client, GenerateRequest(rid, SamplingParams()), worker, deadline_s, first_token_deadline_s)
    stream.latest = latest
    client.streams[rid] = stream
    return stream


def _drained(stream: RequestStream) -> list[StreamEvent]:
    return [stream.queue.get_nowait() for _ in range(stream.queue.qsize())]


def test_deadlines_end_each_stream_once_with_the_right_finish():
    async def run() -> None:
        client = _client()
        progress = StreamEvent("some text", FinishReason.NONE, 5, 7, 2, "", 0, [])
        timed_out = _stream(client, 1, deadline_s=10.0, first_token_deadline_s=2.0, latest=progress)
        queued = _stream(client, 2, deadline_s=None, first_token_deadline_s=2.0)
        running = _stream(client, 3, deadline_s=None, first_token_deadline_s=2.0, latest=progress)
        fresh = _stream(client, 4, deadline_s=30.0, first_token_deadline_s=20.0)
        client._enforce_deadlines(now=1.0)
        assert all(not _drained(s) for s in (timed_out, queued, running, fresh))
        client._enforce_deadlines(now=11.0)
        client._enforce_deadlines(now=12.0)  # already ended: nothing more
        [timeout] = _drained(timed_out)
        assert timeout.finish is FinishReason.TIMEOUT and timeout.text == ""
        assert (timeout.num_prompt_tokens, timeout.num_output_tokens, timeout.num_cached_tokens) == (5, 7, 2)
        [refused] = _drained(queued)
        assert refused.finish is FinishReason.ERROR and refused.error_code == 503 and "retry" in refused.error
        assert not _drained(running) and not _drained(fresh)  # a token came; no deadlines yet
        assert FinishReason.TIMEOUT.openai_name == "timeout"

    asyncio.run(run())

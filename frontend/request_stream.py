"""One request's stream of events, as the frontend's handlers read it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from shared.messages import GenerateRequest, TextLogprob
from shared.sampling import FinishReason

if TYPE_CHECKING:
    from frontend.client import EngineClient
    from frontend.worker_view import Worker


@dataclasses.dataclass
class StreamEvent:
    """What one engine step added to one request."""

    text: str
    finish: FinishReason
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    error: str
    error_code: int
    logprobs: list[TextLogprob]


class RequestStream:
    """Async iterator of StreamEvents for one rid; `close()` aborts it if still running."""

    def __init__(self, client: EngineClient, request: GenerateRequest, worker: Worker,
                 deadline_s: float | None = None, first_token_deadline_s: float | None = None) -> None:
        self.client, self.rid, self.worker = client, request.rid, worker
        self.request = request  # as last sent: a replay to another worker goes from here
        self.queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self.finished = False
        self.wants_logprobs = request.params.logprobs is not None
        self.deadline_s = deadline_s  # monotonic: past it, the request ends with TIMEOUT and its text so far
        self.first_token_deadline_s = first_token_deadline_s  # monotonic: no token by then, 503 (queued too long)
        self.latest: StreamEvent | None = None  # the last event routed to it
        self.output_ids: list[int] = []  # every token streamed so far
        self.num_chars = 0  # characters of text streamed so far
        self.orphaned_s: float | None = None  # since when its worker is gone (None: it is not)
        self.expired = False  # ended here by a deadline

    def deadline_event(self, now: float) -> StreamEvent | None:
        """The event that ends this stream now by a deadline (None: none has passed): TIMEOUT with
        the counts so far, or 503 when no token came within the queue wait."""
        if self.expired or self.finished:
            return None
        if self.latest is None and self.first_token_deadline_s is not None and now > self.first_token_deadline_s:
            return StreamEvent("", FinishReason.ERROR, 0, 0, 0, "no token within the queue wait (--max-queue-wait); "
                               "retry later", 503, [])
        if self.deadline_s is not None and now > self.deadline_s:
            latest = self.latest
            counts = (0, 0, 0) if latest is None else (latest.num_prompt_tokens, latest.num_output_tokens,
                                                       latest.num_cached_tokens)
            return StreamEvent("", FinishReason.TIMEOUT, *counts, "", 0, [])
        return None

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        while not self.finished:
            event = await self.queue.get()
            if event.finish:
                self.finished = True
            yield event

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self.client.abort(self)
        self.client.forget(self)

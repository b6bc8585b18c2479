"""One request's stream of events, as the frontend's handlers read it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from shared.messages import FinishReason, TextLogprob

if TYPE_CHECKING:
    from frontend.client import EngineClient, Worker


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

    def __init__(self, client: EngineClient, rid: int, worker: Worker, deadline_s: float | None = None,
                 first_token_deadline_s: float | None = None) -> None:
        self.client, self.rid, self.worker = client, rid, worker
        self.queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self.finished = False
        self.wants_logprobs = False
        self.deadline_s = deadline_s  # monotonic: past it, the request ends with TIMEOUT and its text so far
        self.first_token_deadline_s = first_token_deadline_s  # monotonic: no token by then, 503 (queued too long)
        self.latest: StreamEvent | None = None  # the last event routed to it
        self.expired = False  # ended here by a deadline

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

"""The answer to a completion request: its choices' events merged, then written whole (JSON) or
streamed (SSE). A chat request with tools has each choice's text split into content and tool
calls by one incremental parser (shared/text/tool_call_parser.py), whole and streamed alike: the
frontend is where a request's text is one continuous stream, across worker replays too."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from aiohttp import web

from frontend import openai_api as api
from frontend.metrics import Metrics
from frontend.request_stream import RequestStream, StreamEvent
from frontend.tools import new_call_id, tool_calls_json
from shared.sampling import FinishReason
from shared.text.tool_call_format import ToolCallFormat
from shared.text.tool_call_parser import CallDelta, ToolCallParser, parse_whole

# No Connection header: aiohttp writes the one it will act on (close when the request asked for it).
# A fixed "keep-alive" made pooling clients reuse connections the server was closing (resets).
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclasses.dataclass(frozen=True)
class Answer:
    """What is being answered: the object kind, the model, choices per prompt, and for chat with
    tools the format calls are parsed with."""

    kind: str  # "chat.completion" or "text_completion"
    model: str
    n: int
    include_usage: bool = False  # streams: a last chunk with the usage
    parser: ToolCallFormat | None = None

    @property
    def is_chat(self) -> bool:
        return self.kind == "chat.completion"


async def collect(request: web.Request, metrics: Metrics, answer: Answer,
                  streams: list[RequestStream]) -> web.Response:
    texts = [""] * len(streams)
    logprobs: list[list] = [[] for _ in streams]
    last: list[StreamEvent | None] = [None] * len(streams)
    async for index, event in _events(metrics, streams):
        if event.finish is FinishReason.ERROR:
            raise _failure(event)
        texts[index] += event.text
        logprobs[index] += event.logprobs
        last[index] = event
    choices = []
    for index, (text, event) in enumerate(zip(texts, last)):
        wants_logprobs = streams[index].wants_logprobs
        finish = event.finish.openai_name
        if answer.is_chat:
            message, finish = _message(answer.parser, text, finish)
            choices.append({"index": index, "message": message, "finish_reason": finish,
                            "logprobs": api.chat_logprobs(logprobs[index]) if wants_logprobs else None})
        else:
            choices.append({"index": index, "text": text, "finish_reason": finish,
                            "logprobs": api.completion_logprobs(logprobs[index], 0) if wants_logprobs else None})
    return web.json_response(api.envelope(streams[0].rid, answer.kind, answer.model, choices,
                                          usage=_usage(last, answer.n)))


def _message(tool_format: ToolCallFormat | None, text: str, finish: str) -> tuple[dict, str]:
    """A chat choice's message and finish reason ("tool_calls" when it ended in calls)."""
    if tool_format is None:
        return {"role": "assistant", "content": text}, finish
    content, calls = parse_whole(tool_format, text)
    if not calls:
        return {"role": "assistant", "content": text}, finish
    ids = [new_call_id(tool_format) for _ in calls]
    return {"role": "assistant", "content": content, "tool_calls": tool_calls_json(calls, ids)}, _ended_in_calls(finish)


def _ended_in_calls(finish: str) -> str:
    return "tool_calls" if finish == "stop" else finish


async def stream(request: web.Request, metrics: Metrics, answer: Answer,
                 streams: list[RequestStream]) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    chunk_kind = "chat.completion.chunk" if answer.is_chat else "text_completion"
    extra = {"usage": None} if answer.include_usage else {}
    rid = streams[0].rid

    async def write(choice: dict) -> None:
        await response.write(api.sse(api.envelope(rid, chunk_kind, answer.model, [choice], **extra)))

    last: list[StreamEvent | None] = [None] * len(streams)
    parsers = [ToolCallParser(answer.parser) if answer.parser else None for _ in streams]
    call_ids: list[dict[int, str]] = [{} for _ in streams]  # per choice: call index -> id
    if answer.is_chat:
        for index in range(len(streams)):
            await write({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None})
    async for index, event in _events(metrics, streams):
        if event.finish is FinishReason.ERROR:
            await response.write(api.sse(_failure(event).body()))
            break
        last[index] = event
        if not event.text and not event.finish:
            continue
        finish = event.finish.openai_name
        if not answer.is_chat:
            await write({"index": index, "text": event.text, "finish_reason": finish,
                         "logprobs": api.completion_logprobs(event.logprobs, 0) if event.logprobs else None})
            continue
        text, calls, parser = event.text, [], parsers[index]
        if parser is not None:
            text, calls = parser.feed(text)
            if event.finish:
                rest, more = parser.finish()
                text, calls = text + rest, calls + more
        delta: dict = {"content": text} if text else {}
        if calls:
            delta["tool_calls"] = [_call_delta(call, call_ids[index], answer.parser) for call in calls]
        if event.finish and call_ids[index]:
            finish = _ended_in_calls(finish)
        if delta or event.finish or event.logprobs:
            await write({"index": index, "delta": delta, "finish_reason": finish,
                         "logprobs": api.chat_logprobs(event.logprobs) if event.logprobs else None})
    else:
        if answer.include_usage:
            await response.write(api.sse(api.envelope(rid, chunk_kind, answer.model, [],
                                                      usage=_usage(last, answer.n))))
    await response.write(api.SSE_DONE)
    return response


def _call_delta(call: CallDelta, ids: dict[int, str], tool_format: ToolCallFormat) -> dict:
    """OpenAI's delta.tool_calls entry: a call's id, type and name first, then argument fragments."""
    if call.name:
        ids[call.index] = new_call_id(tool_format)
        return {"index": call.index, "id": ids[call.index], "type": "function",
                "function": {"name": call.name, "arguments": call.arguments}}
    return {"index": call.index, "function": {"arguments": call.arguments}}


async def _events(metrics: Metrics, streams: list[RequestStream]):
    """(choice index, event) from every stream as they arrive, with latency metrics."""
    merged: asyncio.Queue = asyncio.Queue()
    start = time.monotonic()

    async def pump(index: int, stream: RequestStream) -> None:
        last = None
        async for event in stream:
            now = time.monotonic()
            if event.text or event.num_output_tokens:
                if last is None:
                    metrics.ttft.observe(now - start)
                else:
                    metrics.itl.observe(now - last)
                last = now
            await merged.put((index, event))
        metrics.e2e.observe(time.monotonic() - start)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, event = await merged.get()
            remaining -= bool(event.finish)
            yield index, event
    finally:
        for task in tasks:
            task.cancel()


def _failure(event: StreamEvent) -> api.ApiError:
    return api.ApiError(event.error_code or 500, event.error or "generation failed")


def _usage(last: list[StreamEvent | None], n: int) -> dict:
    """Choices come n per prompt; each prompt's tokens count once."""
    finals = [e for e in last if e is not None]
    firsts = [e for e in last[::n] if e is not None]
    return api.usage(sum(e.num_prompt_tokens for e in firsts), sum(e.num_output_tokens for e in finals),
                     sum(e.num_cached_tokens for e in firsts))

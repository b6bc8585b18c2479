"""The HTTP front door: `make_app(config) -> web.Application` with the OpenAI routes."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from frontend import openai_api as api
from frontend import openapi, structured_output
from frontend.client import EngineClient, Unavailable
from frontend.metrics import Metrics
from frontend.middlewares import api_key_check, openai_errors
from frontend.request_stream import RequestStream, StreamEvent
from shared.config import FrontendConfig
from shared.messages import FinishReason, GenerateRequest, TokenizeRequest

CLIENT = web.AppKey("client", EngineClient)
METRICS = web.AppKey("metrics", Metrics)
CONFIG = web.AppKey("config", FrontendConfig)
# No Connection header: aiohttp writes the one it will act on (close when the request asked for it).
# A fixed "keep-alive" made pooling clients reuse connections the server was closing (resets).
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _served_model(request: web.Request, model: str) -> str:
    client = request.app[CLIENT]
    names = {w.model for w in client.workers.values()}
    if not names:
        raise Unavailable("no tokenizer worker is ready")
    if model not in names:
        raise api.ApiError(404, f"model {model!r} does not exist; this server serves {sorted(names)}", "model")
    return model


def _max_model_len(request: web.Request) -> int:
    return min(w.max_model_len for w in request.app[CLIENT].workers.values())


async def completions(request: web.Request) -> web.StreamResponse:
    body = api.decode(await request.read(), api.CompletionRequest)
    model = _served_model(request, body.model)
    api.check_common(body)
    prompts, stop = api.completion_prompts(body), api.stop_strings(body)
    grammar = await structured_output.grammar(body.response_format, body.structured_outputs)
    jobs = []
    for p, prompt in enumerate(prompts):
        for j in range(body.n):
            params = api.sampling_params(body, body.max_tokens, body.logprobs, _max_model_len(request), j, grammar)
            text, ids = (prompt, None) if isinstance(prompt, str) else (None, list(prompt))
            jobs.append(lambda rid, params=params, text=text, ids=ids: GenerateRequest(
                rid, params, prompt=text, prompt_ids=ids, stop=stop, echo=body.echo,
                max_tokens_is_default=body.max_tokens is None))
    return await _respond(request, body, model, jobs, "text_completion")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = api.decode(await request.read(), api.ChatRequest)
    model = _served_model(request, body.model)
    api.check_common(body)
    messages, stop = api.chat_messages(body), api.stop_strings(body)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    grammar = await structured_output.grammar(body.response_format, body.structured_outputs)
    jobs = []
    for j in range(body.n):
        params = api.sampling_params(body, max_tokens, logprobs, _max_model_len(request), j, grammar)
        jobs.append(lambda rid, params=params: GenerateRequest(rid, params, messages=messages, stop=stop,
                                                               max_tokens_is_default=max_tokens is None))
    return await _respond(request, body, model, jobs, "chat.completion")


async def _respond(request: web.Request, body, model: str, jobs: list, kind: str) -> web.StreamResponse:
    client = request.app[CLIENT]
    streams: list[RequestStream] = []
    try:
        timeout_s = api.request_timeout(body, request.app[CONFIG].request_timeout_s)
        for job in jobs:
            streams.append(client.submit(job, timeout_s))
        if body.stream:
            return await _stream(request, body, model, streams, kind)
        return await _collect(request, model, streams, kind, body.n)
    finally:
        for stream in streams:
            stream.close()  # aborts whatever is still running (client gone, error, cancellation)


async def _events(request: web.Request, streams: list[RequestStream]):
    """(choice index, event) from every stream as they arrive, with latency metrics."""
    metrics = request.app[METRICS]
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


async def _collect(request: web.Request, model: str, streams: list[RequestStream], kind: str,
                   n: int) -> web.Response:
    texts = [""] * len(streams)
    logprobs: list[list] = [[] for _ in streams]
    last: list[StreamEvent | None] = [None] * len(streams)
    async for index, event in _events(request, streams):
        if event.finish is FinishReason.ERROR:
            raise _failure(event)
        texts[index] += event.text
        logprobs[index] += event.logprobs
        last[index] = event
    choices = []
    for index, (text, event) in enumerate(zip(texts, last)):
        wants_logprobs = streams[index].wants_logprobs
        if kind == "chat.completion":
            choices.append({"index": index, "message": {"role": "assistant", "content": text},
                            "logprobs": api.chat_logprobs(logprobs[index]) if wants_logprobs else None,
                            "finish_reason": event.finish.openai_name})
        else:
            choices.append({"index": index, "text": text, "finish_reason": event.finish.openai_name,
                            "logprobs": api.completion_logprobs(logprobs[index], 0) if wants_logprobs else None})
    usage = _usage(last, n)
    return web.json_response(api.envelope(streams[0].rid, kind, model, choices, usage=usage))


def _usage(last: list[StreamEvent | None], n: int) -> dict:
    """Choices come n per prompt; each prompt's tokens count once."""
    finals = [e for e in last if e is not None]
    firsts = [e for e in last[::n] if e is not None]
    return api.usage(sum(e.num_prompt_tokens for e in firsts), sum(e.num_output_tokens for e in finals),
                     sum(e.num_cached_tokens for e in firsts))


async def _stream(request: web.Request, body, model: str, streams: list[RequestStream],
                  kind: str) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}
    rid = streams[0].rid
    last: list[StreamEvent | None] = [None] * len(streams)
    if chunk_kind == "chat.completion.chunk":
        for index in range(len(streams)):
            choice = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}
            await response.write(api.sse(api.envelope(rid, chunk_kind, model, [choice], **extra)))
    async for index, event in _events(request, streams):
        if event.finish is FinishReason.ERROR:
            await response.write(api.sse(_failure(event).body()))
            break
        last[index] = event
        if not event.text and not event.finish:
            continue
        finish = event.finish.openai_name
        if chunk_kind == "chat.completion.chunk":
            choice = {"index": index, "delta": {"content": event.text} if event.text else {},
                      "logprobs": api.chat_logprobs(event.logprobs) if event.logprobs else None,
                      "finish_reason": finish}
        else:
            choice = {"index": index, "text": event.text, "finish_reason": finish,
                      "logprobs": api.completion_logprobs(event.logprobs, 0) if event.logprobs else None}
        await response.write(api.sse(api.envelope(rid, chunk_kind, model, [choice], **extra)))
    else:
        if include_usage:
            await response.write(api.sse(api.envelope(rid, chunk_kind, model, [], usage=_usage(last, body.n))))
    await response.write(api.SSE_DONE)
    return response


async def tokenize(request: web.Request) -> web.Response:
    body = api.decode(await request.read(), api.TokenizeBody)
    if body.model is not None:
        _served_model(request, body.model)
    if (body.prompt is None) == (body.messages is None):
        raise api.ApiError(400, "give exactly one of prompt and messages", "prompt")
    messages = None if body.messages is None else api.chat_messages(
        api.ChatRequest(model="", messages=body.messages))
    result = await request.app[CLIENT].tokenize(lambda rid: TokenizeRequest(
        rid, prompt=body.prompt, messages=messages, add_special_tokens=body.add_special_tokens))
    if result.error:
        raise api.ApiError(400, result.error)
    return web.json_response({"count": len(result.token_ids), "max_model_len": _max_model_len(request),
                              "tokens": result.token_ids})


async def detokenize(request: web.Request) -> web.Response:
    body = api.decode(await request.read(), api.DetokenizeBody)
    if body.model is not None:
        _served_model(request, body.model)
    result = await request.app[CLIENT].tokenize(lambda rid: TokenizeRequest(rid, token_ids=body.tokens))
    if result.error:
        raise api.ApiError(400, result.error, "tokens")
    return web.json_response({"prompt": result.text})


async def models(request: web.Request) -> web.Response:
    workers = request.app[CLIENT].workers.values()
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "forge", "max_model_len": length}
            for name, length in sorted({(w.model, w.max_model_len) for w in workers})]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    if not request.app[CLIENT].is_ready:
        raise Unavailable("the engine or its tokenizer workers are not ready")
    return web.json_response({"status": "ok"})


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), content_type="text/plain")


def make_app(config: FrontendConfig) -> web.Application:
    middlewares = [openai_errors] + ([api_key_check(config.api_keys)] if config.api_keys else [])
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=middlewares)
    client = EngineClient(config.worker_address, config.max_in_flight, config.curve_dir,
                          config.engine_stall_timeout_s, config.max_queue_wait_s)
    app[CONFIG], app[CLIENT], app[METRICS] = config, client, Metrics(client)

    async def lifecycle(app: web.Application):
        await client.start()
        yield
        await client.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_document)
    return app

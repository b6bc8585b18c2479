"""The HTTP front door: `make_app(config) -> web.Application` with the OpenAI routes."""

from __future__ import annotations

from aiohttp import web

from frontend import openai_api as api
from frontend import openapi, responses, structured_output, tools
from frontend.api_error import require
from frontend.client import EngineClient, Unavailable
from frontend.metrics import Metrics
from frontend.middlewares import api_key_check, openai_errors
from frontend.request_stream import RequestStream
from shared.config import FrontendConfig
from shared.messages import GenerateRequest, TokenizeRequest

CLIENT = web.AppKey("client", EngineClient)
METRICS = web.AppKey("metrics", Metrics)
CONFIG = web.AppKey("config", FrontendConfig)


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


def _tool_call_format(request: web.Request) -> str:
    return next(iter(request.app[CLIENT].workers.values())).tool_call_format


async def completions(request: web.Request) -> web.StreamResponse:
    body = api.decode(await request.read(), api.CompletionRequest)
    model = _served_model(request, body.model)
    api.check_common(body)
    prompts, stop = api.completion_prompts(body), api.stop_strings(body)
    max_tokens, prompt_logprobs, score_only = api.completion_scoring(body)
    grammar = await structured_output.grammar(body.response_format, body.structured_outputs)
    jobs = []
    for p, prompt in enumerate(prompts):
        for j in range(body.n):
            params = api.sampling_params(body, max_tokens, body.logprobs, _max_model_len(request), j, grammar,
                                         prompt_logprobs)
            text, ids = (prompt, None) if isinstance(prompt, str) else (None, list(prompt))
            jobs.append(lambda rid, params=params, text=text, ids=ids: GenerateRequest(
                rid, params, prompt=text, prompt_ids=ids, stop=stop, echo=body.echo,
                max_tokens_is_default=max_tokens is None, score_only=score_only))
    return await _respond(request, body, jobs, responses.Answer("text_completion", model, body.n, _usage_chunk(body)))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = api.decode(await request.read(), api.ChatRequest)
    model = _served_model(request, body.model)
    api.check_common(body)
    messages, stop = api.chat_messages(body), api.stop_strings(body)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    tool_use = await tools.tool_use(body.tools, body.tool_choice, body.parallel_tool_calls,
                                    _tool_call_format(request))
    grammar = await structured_output.grammar(body.response_format, body.structured_outputs)
    require(not (grammar and tool_use.grammar), "tool_choice",
                "a forced tool call and response_format or structured_outputs cannot both constrain the output")
    jobs = []
    for j in range(body.n):
        params = api.sampling_params(body, max_tokens, logprobs, _max_model_len(request), j,
                                     grammar or tool_use.grammar)
        jobs.append(lambda rid, params=params: GenerateRequest(rid, params, messages=messages, stop=stop,
                                                               max_tokens_is_default=max_tokens is None,
                                                               tools=tool_use.tools))
    answer = responses.Answer("chat.completion", model, body.n, _usage_chunk(body), tool_use.parser)
    return await _respond(request, body, jobs, answer)


def _usage_chunk(body: api.CompletionRequest | api.ChatRequest) -> bool:
    return bool(body.stream and body.stream_options and body.stream_options.include_usage)


async def _respond(request: web.Request, body, jobs: list, answer: responses.Answer) -> web.StreamResponse:
    client = request.app[CLIENT]
    streams: list[RequestStream] = []
    try:
        timeout_s = api.request_timeout(body, request.app[CONFIG].request_timeout_s)
        for job in jobs:
            streams.append(client.submit(job, timeout_s))
        if body.stream:
            return await responses.stream(request, request.app[METRICS], answer, streams)
        return await responses.collect(request, request.app[METRICS], answer, streams)
    finally:
        for stream in streams:
            stream.close()  # aborts whatever is still running (client gone, error, cancellation)


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

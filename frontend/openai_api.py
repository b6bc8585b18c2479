"""OpenAI request parsing and validation, and the response / SSE chunk shapes.

Requests are decoded straight from bytes into strict msgspec structs: a wrong type or an unknown
field is a 400 naming the field. Fields OpenAI defines that Forge does not implement are
accepted only at their neutral values.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any, ClassVar

import msgspec

from frontend.api_error import ApiError, require
from frontend.structured_output import ResponseFormat, StructuredOutputs
from frontend.tools import NamedToolChoice, Tool
from shared.messages import ChatMessage, ToolCall
from shared.sampling import SamplingParams

MAX_N = 16


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    include_usage: bool = False


class ContentPart(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    text: str = ""


class InFunctionCall(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    arguments: str  # a JSON object's text


class InToolCall(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    function: InFunctionCall
    type: str = "function"


class InMessage(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    refusal: str | None = None  # an assistant turn's, as clients echo it back: not rendered
    tool_calls: list[InToolCall] | None = None  # an assistant turn's
    tool_call_id: str | None = None  # a tool turn's


class _NullMeansDefault(msgspec.Struct):
    """OpenAI clients send an explicit null for "the default"; OpenAI and vLLM read it so. Fields
    typed `T | None = default` whose null means anything else are listed in KEEPS_NULL."""

    KEEPS_NULL: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        for field in msgspec.structs.fields(self):
            if getattr(self, field.name) is not None or field.name in self.KEEPS_NULL:
                continue
            if field.default_factory is not msgspec.NODEFAULT:
                setattr(self, field.name, field.default_factory())
            elif field.default not in (None, msgspec.NODEFAULT):
                setattr(self, field.name, field.default)


class _Common(_NullMeansDefault, forbid_unknown_fields=True, kw_only=True):
    KEEPS_NULL: ClassVar[frozenset[str]] = frozenset({"max_tokens"})  # null: the rest of the context

    model: str
    n: int | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None  # see frontend/structured_output.py
    # Accepted and not acted on (clients send them by default)
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    # Extensions (vLLM names)
    top_k: int | None = 0
    min_p: float | None = 0.0
    repetition_penalty: float | None = 1.0
    ignore_eos: bool | None = False
    min_tokens: int | None = 0
    stop_token_ids: list[int] | None = msgspec.field(default_factory=list)
    structured_outputs: StructuredOutputs | None = None
    # Forge's: end this request after this many seconds (at most the server's --request-timeout)
    request_timeout: float | None = None


class CompletionRequest(_Common, kw_only=True):
    prompt: str | list[str | int | list[int]]  # a text, texts, token ids, or lists of ids
    max_tokens: int | None = 16
    echo: bool | None = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None


class ChatRequest(_Common, kw_only=True):
    messages: list[InMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[Tool] | None = None  # see frontend/tools.py
    tool_choice: str | NamedToolChoice | None = None  # default: "auto" with tools, else "none"
    parallel_tool_calls: bool | None = True


class TokenizeBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: str | None = None
    prompt: str | None = None
    messages: list[InMessage] | None = None
    add_special_tokens: bool = True


class DetokenizeBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: str | None = None
    tokens: list[int]


def decode(body: bytes, kind: type) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        match = re.search(r"at `\$\.([A-Za-z_]+)", str(exc)) or re.search(r"unknown field `([^`]+)`", str(exc))
        raise ApiError(400, f"invalid request: {exc}", match.group(1) if match else None) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None


def sampling_params(request: _Common, max_tokens: int | None, logprobs: int | None, max_model_len: int,
                    index: int, grammar: str, prompt_logprobs: int | None = None) -> SamplingParams:
    """Choice `index` of the request: with a seed, choice i uses seed + i (distinct, reproducible).
    `grammar`: the request's constraint (frontend/structured_output.py), "" for none."""
    try:
        return SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else max_model_len, temperature=request.temperature,
            top_p=request.top_p, top_k=request.top_k, min_p=request.min_p,
            repetition_penalty=request.repetition_penalty, presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            seed=None if request.seed is None else request.seed + index, stop_token_ids=request.stop_token_ids,
            ignore_eos=request.ignore_eos, min_tokens=request.min_tokens, logprobs=logprobs,
            grammar=grammar, prompt_logprobs=prompt_logprobs)
    except ValueError as exc:
        field = re.search(r"SamplingParams\.(\w+)", str(exc))
        raise ApiError(400, str(exc).replace("SamplingParams.", ""), field.group(1) if field else None) from None


def check_common(request: _Common) -> None:
    """Request-level rules, checked before any work is submitted."""
    require(1 <= request.n <= MAX_N, "n", f"n must be between 1 and {MAX_N}")
    require(not request.logit_bias, "logit_bias", "logit_bias is not supported")
    require(request.stream or request.stream_options is None, "stream_options",
            "stream_options is only allowed with stream=true")
    require(request.request_timeout is None or request.request_timeout > 0, "request_timeout",
            "request_timeout must be a positive number of seconds")


def request_timeout(request: _Common, server_limit_s: float | None) -> float | None:
    """Seconds the request may run: its own request_timeout, capped by the server's limit."""
    limits = [t for t in (request.request_timeout, server_limit_s) if t is not None]
    return min(limits) if limits else None


def stop_strings(request: _Common) -> list[str]:
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    require(len(stop) <= 16, "stop", "at most 16 stop strings")
    return stop


def completion_scoring(request: CompletionRequest) -> tuple[int | None, int | None, bool]:
    """(max_tokens to generate, prompt logprobs to compute, whether only the prompt is wanted). With
    echo, logprobs cover the prompt too; max_tokens 0 with echo scores the prompt and generates
    nothing (lm-evaluation-harness's loglikelihood requests)."""
    score_only = request.max_tokens == 0
    require(not score_only or request.echo, "max_tokens", "max_tokens 0 needs echo: the prompt scored, nothing generated")
    prompt_logprobs = request.logprobs if request.echo else None
    return (1 if score_only else request.max_tokens), prompt_logprobs, score_only


def completion_prompts(request: CompletionRequest) -> list[str | list[int]]:
    require(request.suffix is None, "suffix", "suffix is not supported")
    require(request.best_of in (None, 1), "best_of", "best_of is not supported")
    require(request.logprobs is None or 0 <= request.logprobs <= 5, "logprobs", "logprobs must be in [0, 5]")
    prompt = request.prompt
    if isinstance(prompt, str) or all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    else:
        require(all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt), "prompt",
                "prompt must be a string, a list of strings, a list of token ids or a list of such lists")
        prompts = list(prompt)
    require(bool(prompts) and all(len(p) > 0 for p in prompts), "prompt", "the prompt is empty")
    require(len(prompts) * request.n <= MAX_N * 4, "prompt", "too many prompts in one request")
    return prompts


def chat_messages(request: ChatRequest) -> list[ChatMessage]:
    require(bool(request.messages), "messages", "messages must not be empty")
    require(request.top_logprobs is None or 0 <= request.top_logprobs <= 20, "top_logprobs",
            "top_logprobs must be in [0, 20]")
    messages = []
    for message in request.messages:
        content = message.content
        if isinstance(content, list):
            require(all(p.type == "text" for p in content), "messages", "only text content parts are supported")
            content = "".join(p.text for p in content)
        messages.append(ChatMessage(message.role, content or "", _tool_calls(message),
                                    message.tool_call_id or ""))
    return messages


def _tool_calls(message: InMessage) -> list[ToolCall]:
    calls = []
    for call in message.tool_calls or []:
        try:
            arguments = json.loads(call.function.arguments)
        except ValueError:
            arguments = None
        require(call.type == "function" and isinstance(arguments, dict), "messages",
                f"tool call {call.id!r}: a function call whose arguments are a JSON object's text")
        calls.append(ToolCall(call.id, call.function.name, call.function.arguments))
    return calls


# --- responses -----------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def envelope(rid: int, kind: str, model: str, choices: list[dict], **extra: Any) -> dict[str, Any]:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{rid}", "object": kind, "created": int(time.time()), "model": model,
            "choices": choices, **extra}


def completion_logprobs(entries: list, text_offset: int) -> dict[str, Any]:
    """The legacy completions logprobs object. An echoed prompt's first token has no logprob (NaN
    from the worker): null, as OpenAI and vLLM write it."""
    tokens = [e.token for e in entries]
    offsets, position = [], text_offset
    for token in tokens:
        offsets.append(position)
        position += len(token)
    return {"tokens": tokens, "token_logprobs": [None if math.isnan(e.logprob) else e.logprob for e in entries],
            "top_logprobs": [None if math.isnan(e.logprob) else dict(zip(e.top_tokens, e.top_logprobs))
                             for e in entries], "text_offset": offsets}


def chat_logprobs(entries: list) -> dict[str, Any]:
    def item(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {"content": [dict(item(e.token, e.logprob),
                             top_logprobs=[item(t, lp) for t, lp in zip(e.top_tokens, e.top_logprobs)])
                        for e in entries]}


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"

"""The messages that cross process boundaries (the sampling types they carry, shared with the
in-process API, are in shared/sampling.py).

Structs are tagged, array-like and gc-free so one pre-built msgspec decoder per inbox can
decode a union by tag. Fields are only ever appended, never inserted or renamed.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.sampling import SamplingParams, TokenLogprob

# --- serving: frontend <-> tokenizer workers <-> engine (see DESIGN.md section 1) ---------------
_WIRE = dict(tag=True, array_like=True, frozen=True, gc=False)


def _column() -> list:
    """A columnar message's field: each entry of a message is one row across its lists."""
    return msgspec.field(default_factory=list)


def _check_columns(message: msgspec.Struct) -> None:
    """Every column of a columnar message has one entry a row (a peer's message that breaks this is
    refused at decoding, like any malformed one, instead of failing a reader half-way)."""
    lengths = {len(getattr(message, name)) for name in message.__struct_fields__}
    if len(lengths) > 1:
        raise ValueError(f"{type(message).__name__} columns differ in length: {sorted(lengths)}")


class ToolCall(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A function call an assistant message made (OpenAI's tool_calls entry)."""

    id: str
    name: str
    arguments: str  # a JSON object's text


class ChatMessage(msgspec.Struct, array_like=True, frozen=True, gc=False):
    role: str
    content: str
    tool_calls: list[ToolCall] = []  # an assistant turn's calls
    tool_call_id: str = ""  # a tool turn's: the call it answers


class GenerateRequest(msgspec.Struct, **_WIRE):
    """Frontend -> worker: one generation (an OpenAI `n` > 1 arrives as n of these).
    Exactly one of prompt, prompt_ids and messages is set."""

    rid: int
    params: SamplingParams
    prompt: str | None = None  # /v1/completions with text
    prompt_ids: list[int] | None = None  # /v1/completions with token ids
    messages: list[ChatMessage] | None = None  # /v1/chat/completions
    stop: list[str] = []  # stop strings: matched on text, never emitted
    echo: bool = False  # prepend the prompt's text to the first delta
    max_tokens_is_default: bool = False  # the client gave none: use the rest of the context
    # A replay (the worker that had it died): which submission this is (the engine knows it as
    # rid * MAX_ATTEMPTS + attempt, so a late output of an earlier one is never taken for this
    # one's), the tokens streamed so far, and how many characters of text the client has.
    attempt: int = 0
    resume_ids: list[int] = []
    resume_chars: int = 0
    tools: list[dict[str, Any]] = []  # chat: the tools the chat template shows the model (OpenAI's shape)
    score_only: bool = False  # max_tokens 0 with echo: the prompt and its logprobs; the one token generated is dropped


MAX_ATTEMPTS = 64  # submissions of one request: the first, then replays


class AbortRequest(msgspec.Struct, **_WIRE):
    """Stop `rid` and free its KV blocks (idempotent; unknown ids are ignored)."""

    rid: int


class Shutdown(msgspec.Struct, **_WIRE):
    pass


class EngineRequest(msgspec.Struct, **_WIRE):
    """Worker -> engine: a tokenized, validated request."""

    rid: int
    prompt_ids: list[int]
    params: SamplingParams  # its seed is set: a replay draws what the first run would have
    worker: int  # the tokenizer worker that receives this rid's outputs
    # A replay (the engine that ran it died): the tokens generated and streamed so far, which the
    # engine takes as context and counts as outputs (max_tokens, penalties, the sampling offset).
    output_ids: list[int] = _column()
    engine_instance: int = 0  # the EngineReady.instance it is meant for: an older engine's are dropped


class Hello(msgspec.Struct, **_WIRE):
    """Worker or frontend -> engine (on its ROUTER): register for outputs and stats."""

    client_id: int
    role: str  # "worker" or "frontend"


class Refused(msgspec.Struct, **_WIRE):
    """Binder -> a peer it will not serve, in answer to its registration: `reason` says why (a
    worker id already taken by a live worker). The peer says so and exits."""

    reason: str


class EngineReady(msgspec.Struct, **_WIRE):
    """Engine -> client, in answer to Hello: the real capacity."""

    model: str
    block_size: int
    num_kv_blocks: int
    max_model_len: int
    tokenizer_json: str  # the model's tokenizer (tokenizers' JSON): workers need no model files
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    instance: int = 0  # drawn at each engine start: a worker that sees a new one replays its requests
    tool_call_format: str = ""  # how the model writes tool calls (shared/text/tool_call_format.py); "" none


class EngineStats(msgspec.Struct, **_WIRE):
    """Engine -> every client, about once a second and on change; doubles as the heartbeat.
    Counters are totals since start (Prometheus takes rates)."""

    num_running: int
    num_waiting: int
    kv_usage: float
    num_prompt_tokens: int
    num_generation_tokens: int
    num_prefix_cache_queries: int
    num_prefix_cache_hits: int
    num_preemptions: int
    cpu_seconds: float
    step_running_s: float = 0.0  # how long the step in progress has run (0 between steps): a stall shows here
    # Speculative decoding, with vLLM's meaning: verified drafts, their tokens, the accepted ones,
    # and per draft position k how many drafts had their token k accepted.
    spec_num_drafts: int = 0
    spec_num_draft_tokens: int = 0
    spec_num_accepted_tokens: int = 0
    spec_accepted_per_position: list[int] = _column()


class TokenDeltas(msgspec.Struct, **_WIRE):
    """Engine -> one worker, once per step: parallel lists, one entry per request of that worker
    that advanced or finished this step."""

    rids: list[int] = _column()
    new_ids: list[list[int]] = _column()
    finish: list[int] = _column()  # FinishReason
    num_prompt_tokens: list[int] = _column()
    num_cached_tokens: list[int] = _column()
    errors: list[str] = _column()  # "" unless finish is ERROR
    logprobs: list[list[TokenLogprob]] = _column()  # empty lists unless asked for
    error_codes: list[int] = _column()  # with an error: 400 (cannot be served as asked) or 500 (engine fault)
    prompt_logprobs: list[list[TokenLogprob]] = _column()  # with a request's first token, if it asked: one per
    # prompt token after the first

    def __post_init__(self) -> None:
        _check_columns(self)


class TextLogprob(msgspec.Struct, array_like=True, frozen=True, gc=False):
    token: str
    logprob: float
    top_tokens: list[str]
    top_logprobs: list[float]


class TextDeltas(msgspec.Struct, **_WIRE):
    """Worker -> frontend, once per engine step: parallel lists, one entry per request."""

    rids: list[int] = _column()
    texts: list[str] = _column()
    finish: list[int] = _column()  # FinishReason
    num_prompt_tokens: list[int] = _column()
    num_output_tokens: list[int] = _column()  # total so far
    num_cached_tokens: list[int] = _column()
    errors: list[str] = _column()  # "" unless finish is ERROR
    error_codes: list[int] = _column()  # HTTP status for errors: 400 bad input, 500 engine failure; else 0
    logprobs: list[list[TextLogprob]] = _column()
    new_ids: list[list[int]] = _column()  # the tokens behind each text: kept to replay the request
    prompt_logprobs: list[list[TextLogprob]] = _column()  # with the first text, if asked: every prompt token's
    # (the first's logprob is NaN: nothing comes before it)

    def __post_init__(self) -> None:
        _check_columns(self)


class WorkerReady(msgspec.Struct, **_WIRE):
    """Worker -> frontend: registered with the engine and able to take requests."""

    worker_id: int
    model: str
    max_model_len: int
    tool_call_format: str = ""  # the engine's (see EngineReady)


class WorkerHeartbeat(msgspec.Struct, **_WIRE):
    """Worker -> frontend, about once a second, with the engine's latest stats."""

    worker_id: int
    num_active: int
    cpu_seconds: float
    engine: EngineStats | None  # None until the worker has heard from the engine, and while it has lost it
    engine_age_s: float = 0.0  # how long ago the engine sent those stats


class TokenizeRequest(msgspec.Struct, **_WIRE):
    """Frontend -> worker: /tokenize (prompt or messages) or /detokenize (token_ids)."""

    rid: int
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    token_ids: list[int] | None = None
    add_special_tokens: bool = True


class TokenizeResult(msgspec.Struct, **_WIRE):
    """Worker -> frontend: the answer to one TokenizeRequest ("" error on success)."""

    rid: int
    token_ids: list[int]
    text: str
    error: str


# What each inbox decodes (one pre-built decoder per inbox).
ToWorker = GenerateRequest | AbortRequest | TokenizeRequest | Shutdown  # from the frontend
ToEnginePull = EngineRequest | AbortRequest | Shutdown  # from workers (ordered per worker)
ToEngineRouter = Hello  # registration
FromEngine = EngineReady | EngineStats | TokenDeltas | Refused  # to workers
ToFrontend = WorkerReady | WorkerHeartbeat | TextDeltas | TokenizeResult  # from workers

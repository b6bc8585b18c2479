"""What a request asks of sampling, and what it gets back per token: shared by the wire messages
(shared/messages.py) and the in-process API.

Structs are tagged or array-like and gc-free, like every wire type. Fields are only ever
appended, never inserted or renamed.
"""

from __future__ import annotations

import enum
import secrets

import msgspec

_MAX_LOGPROBS = 20
_MAX_SEED = 2**64


class FinishReason(enum.IntEnum):
    """Why a request ended; NONE while it is still running (an int on the wire)."""

    NONE = 0
    STOP = 1  # EOS, a stop token id, or a stop string
    LENGTH = 2  # max_tokens or the model's context reached
    ABORT = 3  # aborted by the client
    ERROR = 4  # the engine could not serve it (the error text says why)
    TIMEOUT = 5  # ran past its deadline (--request-timeout or its request_timeout): the text so far

    @property
    def openai_name(self) -> str | None:
        """The name OpenAI's `finish_reason` uses (None while running)."""
        return _OPENAI_NAMES[self]


_OPENAI_NAMES = {
    FinishReason.NONE: None,
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.ABORT: "abort",
    FinishReason.ERROR: "error",
    FinishReason.TIMEOUT: "timeout",
}


class SamplingParams(msgspec.Struct, tag=True, array_like=True, frozen=True, gc=False):
    """How to pick tokens for one request. Construction (and decoding) validates every field
    and raises a ValueError naming the field that is out of range."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 or -1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # over prompt and output tokens; 1 = off
    presence_penalty: float = 0.0  # over output tokens
    frequency_penalty: float = 0.0  # over output tokens
    seed: int | None = None  # None: a fresh random seed per request
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    min_tokens: int = 0  # EOS and stop tokens are masked until this many tokens exist
    logprobs: int | None = None  # None: no logprobs; N: the sampled token's plus the top N
    # A constraint every token must keep to: an llguidance grammar (frontend/structured_output.py
    # builds it from response_format or structured_outputs); "" = none. The request ends where the
    # grammar does.
    grammar: str = ""
    # /v1/completions echo with logprobs: each prompt token's logprob (and the top N) given the
    # tokens before it; None: not computed. Such a request is never served from the prefix cache.
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        _check(self.max_tokens >= 1, "max_tokens", "must be at least 1", self.max_tokens)
        _check(self.temperature >= 0.0, "temperature", "must be >= 0", self.temperature)
        _check(0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]", self.top_p)
        _check(self.top_k >= -1, "top_k", "must be -1, 0 (off) or positive", self.top_k)
        _check(0.0 <= self.min_p <= 1.0, "min_p", "must be in [0, 1]", self.min_p)
        _check(self.repetition_penalty > 0.0, "repetition_penalty", "must be > 0", self.repetition_penalty)
        _check(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "must be in [-2, 2]",
               self.presence_penalty)
        _check(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", "must be in [-2, 2]",
               self.frequency_penalty)
        _check(self.seed is None or -_MAX_SEED < self.seed < _MAX_SEED, "seed", "must fit in 64 bits",
               self.seed)
        _check(all(t >= 0 for t in self.stop_token_ids), "stop_token_ids", "must be token ids >= 0",
               self.stop_token_ids)
        _check(0 <= self.min_tokens <= self.max_tokens, "min_tokens", "must be in [0, max_tokens]",
               self.min_tokens)
        _check(self.logprobs is None or 0 <= self.logprobs <= _MAX_LOGPROBS, "logprobs",
               f"must be in [0, {_MAX_LOGPROBS}]", self.logprobs)
        _check(self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= _MAX_LOGPROBS, "prompt_logprobs",
               f"must be in [0, {_MAX_LOGPROBS}]", self.prompt_logprobs)

    def seeded(self) -> SamplingParams:
        """These params with a seed: their own, or one drawn now, so that a replay of the request
        samples what its first run would have."""
        if self.seed is not None:
            return self
        return msgspec.structs.replace(self, seed=secrets.randbits(63))

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


def _check(ok: bool, field: str, rule: str, value: object) -> None:
    if not ok:
        raise ValueError(f"SamplingParams.{field} {rule}, got {value!r}")


class TokenLogprob(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The log-probability of one sampled token and of the top alternatives at that step,
    taken from the model's raw distribution (before temperature and penalties)."""

    token_id: int
    logprob: float
    top_ids: list[int]  # best first
    top_logprobs: list[float]

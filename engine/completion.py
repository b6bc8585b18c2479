"""The result of one finished generation, as `InferenceEngine.generate` returns it."""

from __future__ import annotations

import dataclasses

from shared.sampling import TokenLogprob


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]  # generated tokens only
    finish_reason: str  # "stop", "length", "abort" or "error"
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens served from the prefix cache
    logprobs: list[TokenLogprob] | None  # one per generated token when asked for, else None
    error: str | None = None  # why the engine could not serve it (finish_reason "error")
    prompt_logprobs: list[TokenLogprob] | None = None  # with params.prompt_logprobs: prompt tokens 1.. (not 0)

    def __str__(self) -> str:
        return self.text

"""A request's state inside the engine: its tokens, its progress, its KV blocks."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from shared.sampling import FinishReason, SamplingParams, TokenLogprob


class RequestStatus(enum.Enum):
    WAITING = enum.auto()  # queued, or preempted and waiting to be recomputed
    RUNNING = enum.auto()
    FINISHED = enum.auto()


class Request:
    """One generation. `token_ids` is the prompt followed by the outputs so far; the engine
    catches `num_computed_tokens` up to `num_tokens` and samples when the two meet."""

    __slots__ = (
        "block_ids",
        "draft_ids",
        "draft_state",
        "draftable",
        "eos_token_ids",
        "error",
        "error_code",
        "finish_reason",
        "hashed_parent",
        "length_limit",
        "logprobs",
        "matcher",
        "num_cached_tokens",
        "num_computed_tokens",
        "num_hashed_blocks",
        "num_preemptions",
        "params",
        "plain_greedy",
        "prompt_len",
        "prompt_logprobs",
        "rid",
        "seed",
        "status",
        "stop_ids",
        "token_ids",
    )

    def __init__(self, rid: int, prompt_ids: list[int], params: SamplingParams, seed: int,
                 eos_token_ids: frozenset[int], output_ids: Sequence[int] = ()) -> None:
        self.rid = rid
        self.token_ids = [*prompt_ids, *output_ids]  # outputs given: a replay, continuing from them
        self.prompt_len = len(prompt_ids)
        self.params = params
        self.seed = seed  # params.seed, or a random one drawn at admission
        self.eos_token_ids = eos_token_ids
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at first admission
        self.block_ids: list[int] = []
        self.num_hashed_blocks = 0  # see BlockOwner
        self.hashed_parent: object = None
        # What ends it, checked after every token: a token of stop_ids (EOS unless ignored, and
        # the stop token ids), or length_limit tokens in all (the model's own limit also applies).
        self.stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else eos_token_ids)
        self.length_limit = self.prompt_len + params.max_tokens
        # Nothing but the logits decides its next token (no logprobs, penalties, min_tokens or
        # grammar), so a step may verify draft tokens for it (engine/speculative) ...
        self.draftable = (params.logprobs is None and params.min_tokens == 0 and params.repetition_penalty == 1.0
                          and not params.presence_penalty and not params.frequency_penalty and not params.grammar)
        # ... and, greedy, it takes the sampler's fast path: the top token, nothing else to compute.
        self.plain_greedy = self.draftable and params.is_greedy
        # With params.grammar: its llguidance matcher (engine/grammar), set before the request is
        # queued and advanced by every token it samples.
        self.matcher = None
        self.finish_reason = FinishReason.NONE
        self.error: str | None = None  # set only when finish_reason is ERROR
        self.error_code = 0  # with an error: 400 (cannot be served as asked) or 500 (the engine failed)
        self.logprobs: list[TokenLogprob] = []  # filled only when params.logprobs is set
        # With params.prompt_logprobs: entry k is prompt token k + 1's (scored at position k, as its chunk runs)
        self.prompt_logprobs: list[TokenLogprob] = []
        self.num_preemptions = 0
        # Speculative decoding (engine/speculative): tokens proposed to follow token_ids, computed
        # and verified this step (then cleared), and the drafter's state for this request.
        self.draft_ids: list[int] = []
        self.draft_state = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len:]

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def __repr__(self) -> str:
        return (f"Request(rid={self.rid}, status={self.status.name}, num_tokens={self.num_tokens}, "
                f"num_computed_tokens={self.num_computed_tokens}, blocks={self.block_ids})")

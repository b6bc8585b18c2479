"""Decides, each step, which running requests get draft tokens, and counts how they fare.

A request is drafted for when nothing but the logits decides its next token (`Request.draftable`:
greedy or sampled, without logprobs, penalties, min_tokens or a grammar; see verification.py for
why that keeps its tokens exactly those of decoding without drafts), the step's batch is small
enough to be bound by reading the weights (`disable_by_batch_size`), and its drafts have been
accepted often enough lately to pay for the extra tokens the step computes.

A draft is what followed the latest earlier occurrence of the request's own last tokens
(ngram_proposer.py); with the "suffix" method, when its own text has none, what followed them in
the output of a recent request (output_cache.py).
"""

from __future__ import annotations

from engine.scheduling.request import Request
from engine.speculative import ngram_proposer
from engine.speculative.output_cache import OutputCache
from shared.config import SpeculativeConfig
from shared.sampling import FinishReason

MIN_ACCEPTANCE = 0.2  # below this recent acceptance rate a request stops drafting ...
PROBE_EVERY = 8  # ... except one step in this many, to notice when its text turns repetitive
ACCEPTANCE_MEMORY = 0.7  # weight of the past in a request's running acceptance rate


class DraftState:
    """One request's lookup index and how its drafts fared."""

    __slots__ = ("acceptance", "index", "num_skipped")

    def __init__(self) -> None:
        self.index = ngram_proposer.TokenIndex()
        self.acceptance = 1.0  # running rate of accepted draft tokens; optimistic at first
        self.num_skipped = 0

    def wants_draft(self) -> bool:
        if self.acceptance >= MIN_ACCEPTANCE:
            return True
        self.num_skipped += 1
        return self.num_skipped % PROBE_EVERY == 0


class Drafter:
    def __init__(self, config: SpeculativeConfig, max_model_len: int) -> None:
        self.config = config
        self.max_model_len = max_model_len
        self.num_drafts = 0  # verifications of a non-empty draft (vLLM's spec_decode_num_drafts)
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        self.accepted_per_position = [0] * config.num_speculative_tokens  # drafts whose token k was accepted
        self.outputs = (OutputCache(config.suffix_decoding_max_cached_requests, config.prompt_lookup_min,
                                    config.prompt_lookup_max) if config.method == "suffix" else None)

    def draft(self, running: list[Request]) -> int:
        """Set `draft_ids` on the running requests worth drafting for. Returns the draft tokens set."""
        config = self.config
        if len(running) > config.disable_by_batch_size:
            return 0
        total = 0
        for request in running:
            if not request.draftable or request.num_computed_tokens != len(request.token_ids) - 1:
                continue  # its next token is not the logits' alone, or it is still in its prompt
            room = min(request.length_limit, self.max_model_len) - len(request.token_ids) - 1
            if room <= 0:
                continue
            state = request.draft_state
            if state is None:
                state = request.draft_state = DraftState()
            if not state.wants_draft():
                continue
            num_tokens = min(config.num_speculative_tokens, room)
            request.draft_ids = ngram_proposer.propose(request.token_ids, state.index, num_tokens,
                                                       config.prompt_lookup_min, config.prompt_lookup_max)
            if not request.draft_ids and self.outputs is not None:
                request.draft_ids = self.outputs.propose(request.token_ids, num_tokens)
            total += len(request.draft_ids)
        return total

    def finished(self, request: Request) -> None:
        """A request ended: the suffix method keeps its output if it ended as asked."""
        if self.outputs is not None and request.finish_reason in (FinishReason.STOP, FinishReason.LENGTH):
            self.outputs.add(request.output_ids)

    def record(self, request: Request, num_accepted: int) -> None:
        """Count a verified draft of `request` (its draft_ids) of which `num_accepted` were kept."""
        num_drafted = len(request.draft_ids)
        self.num_drafts += 1
        self.num_draft_tokens += num_drafted
        self.num_accepted_tokens += num_accepted
        for position in range(num_accepted):
            self.accepted_per_position[position] += 1
        state = request.draft_state
        state.acceptance = ACCEPTANCE_MEMORY * state.acceptance + (1 - ACCEPTANCE_MEMORY) * num_accepted / num_drafted

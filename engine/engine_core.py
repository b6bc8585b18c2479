"""One engine step: schedule -> execute -> update. No sockets, no text: token ids in and out."""

from __future__ import annotations

import dataclasses
import random

from engine.model_runner import ModelRunner
from engine.request import Request
from engine.scheduler import Scheduler
from shared.messages import FinishReason, SamplingParams, TokenLogprob


@dataclasses.dataclass
class RequestDelta:
    """What one request gained in one step."""

    rid: int
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprob]
    finish_reason: FinishReason  # NONE while running
    request: Request  # for counts (prompt, cached) and the error text of a failed request


class EngineCore:
    def __init__(self, scheduler: Scheduler, runner: ModelRunner, eos_token_ids: frozenset[int]) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.eos_token_ids = eos_token_ids
        self.seed_source = random.SystemRandom()

    def add_request(self, rid: int, prompt_ids: list[int], params: SamplingParams) -> None:
        """Queue a request. A prompt that can never be served finishes at once with ERROR."""
        if not prompt_ids:
            raise ValueError("prompt is empty: give at least one token")
        vocab_size = self.runner.model.config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab_size:
            raise ValueError(f"prompt has token ids outside the vocabulary [0, {vocab_size})")
        seed = params.seed if params.seed is not None else self.seed_source.getrandbits(63)
        self.scheduler.add(Request(rid, prompt_ids, params, seed, self.eos_token_ids))

    def abort(self, rid: int) -> None:
        self.scheduler.abort(rid)

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self.scheduler.newly_finished)

    def step(self) -> list[RequestDelta]:
        batch = self.scheduler.schedule()
        sampled, logprobs = self.runner.execute(batch) if not batch.is_empty else ([], [])
        finished = self.scheduler.update_from_output(batch, sampled)
        deltas: dict[int, RequestDelta] = {}
        for request, token_id, logprob in zip(batch.requests, sampled, logprobs):
            if token_id is None:
                continue
            new_logprobs = [] if logprob is None else [logprob]
            request.logprobs += new_logprobs
            deltas[request.rid] = RequestDelta(request.rid, [token_id], new_logprobs, request.finish_reason,
                                               request)
        for request in finished:
            delta = deltas.get(request.rid)
            if delta is None:
                deltas[request.rid] = RequestDelta(request.rid, [], [], request.finish_reason, request)
            else:
                delta.finish_reason = request.finish_reason
        return list(deltas.values())

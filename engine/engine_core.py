"""One engine step: schedule -> execute -> update. No sockets, no text: token ids in and out."""

from __future__ import annotations

import random
from collections.abc import Sequence

from engine.model_runner import ModelRunner
from engine.request import Request
from engine.scheduler import Scheduler
from engine.step_output import NO_LOGPROBS, StepOutput
from shared.messages import SamplingParams, TokenLogprob


class EngineCore:
    def __init__(self, scheduler: Scheduler, runner: ModelRunner, eos_token_ids: frozenset[int]) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.eos_token_ids = eos_token_ids
        self.seed_source = random.SystemRandom()

    def add_request(self, rid: int, prompt_ids: list[int], params: SamplingParams,
                    output_ids: Sequence[int] = ()) -> None:
        """Queue a request; `output_ids`: tokens an earlier engine generated for it (a replay),
        taken as context and counted as outputs. A request that can never be served finishes at
        once with ERROR."""
        if not prompt_ids:
            raise ValueError("prompt is empty: give at least one token")
        vocab_size = self.runner.model.config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab_size or any(not 0 <= t < vocab_size for t in output_ids):
            raise ValueError(f"prompt has token ids outside the vocabulary [0, {vocab_size})")
        seed = params.seed if params.seed is not None else self.seed_source.getrandbits(63)
        self.scheduler.add(Request(rid, prompt_ids, params, seed, self.eos_token_ids, output_ids))

    def abort(self, rid: int) -> None:
        self.scheduler.abort(rid)

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self.scheduler.newly_finished)

    def step(self) -> StepOutput:
        """Schedule, run and advance one batch. Returns each request that gained a token or
        finished (an abort or error since the last step counts too)."""
        batch = self.scheduler.schedule()
        if batch.is_empty:
            output, finished = StepOutput.empty(), self.scheduler.update_from_output(batch, [])
        else:
            sampled, logprobs = self.runner.execute(batch)
            finished = self.scheduler.update_from_output(batch, sampled)
            output = _gains(batch.requests, sampled, logprobs)
        output.add_finished(finished)
        return output


def _gains(requests: list[Request], sampled: list[int | None],
           logprobs: list[TokenLogprob | None] | None) -> StepOutput:
    """The scheduled requests that sampled a token, with it (and its logprobs, also kept on the request)."""
    if None in sampled:  # prompt chunks short of their end gained nothing
        rows = [i for i, token_id in enumerate(sampled) if token_id is not None]
        requests, sampled = [requests[i] for i in rows], [sampled[i] for i in rows]
        logprobs = None if logprobs is None else [logprobs[i] for i in rows]
    if logprobs is None:
        new_logprobs = [NO_LOGPROBS] * len(requests)
    else:
        new_logprobs = [NO_LOGPROBS if logprob is None else [logprob] for logprob in logprobs]
        for request, logprob in zip(requests, logprobs):
            if logprob is not None:
                request.logprobs.append(logprob)
    return StepOutput(list(requests), [[token_id] for token_id in sampled], new_logprobs)

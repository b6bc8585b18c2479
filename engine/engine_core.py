"""One engine step: schedule -> execute -> update. No sockets, no text: token ids in and out."""

from __future__ import annotations

import concurrent.futures
import logging
import random
from collections.abc import Sequence

import msgspec

from engine.grammar.compiler import GrammarCompiler
from engine.runner.model_runner import ModelRunner
from engine.scheduling.request import Request
from engine.scheduling.scheduled_batch import ScheduledBatch
from engine.scheduling.scheduler import Scheduler
from engine.step_output import NO_LOGPROBS, StepOutput
from shared.grammar_errors import brief
from shared.sampling import FinishReason, SamplingParams, TokenLogprob

logger = logging.getLogger("forge.engine")


COMPILE_WAIT_S = 0.01  # with nothing else to do, how long a step waits for a grammar to compile


class EngineCore:
    def __init__(self, scheduler: Scheduler, runner: ModelRunner, eos_token_ids: frozenset[int],
                 grammars: GrammarCompiler | None = None) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.eos_token_ids = eos_token_ids
        self.seed_source = random.SystemRandom()
        self.grammars = grammars  # None: the model has no tokenizer, and constraints are refused
        self.compiling: dict[int, tuple[Request, concurrent.futures.Future]] = {}  # rid -> request, its matcher

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
        if params.grammar and self.grammars is None:
            raise ValueError("constrained output needs the model's tokenizer, and this model has none")
        if rid in self.compiling:
            raise ValueError(f"request id {rid} is already in the engine")
        if output_ids and params.prompt_logprobs is not None:  # a replay: they went out with its first token
            params = msgspec.structs.replace(params, prompt_logprobs=None)
        seed = params.seed if params.seed is not None else self.seed_source.getrandbits(63)
        request = Request(rid, prompt_ids, params, seed, self.eos_token_ids, output_ids)
        if params.grammar:  # queued once its matcher is built (see _queue_compiled)
            self.compiling[rid] = (request, self.grammars.submit(params.grammar, output_ids))
        else:
            self.scheduler.add(request)

    def abort(self, rid: int) -> None:
        if rid in self.compiling:
            request, matcher = self.compiling.pop(rid)
            matcher.cancel()
            self.scheduler.end_unqueued(request, FinishReason.ABORT)
        else:
            self.scheduler.abort(rid)

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self.scheduler.newly_finished) or bool(self.compiling)

    def step(self) -> StepOutput:
        """Schedule, run and advance one batch. Returns each request that gained a token or
        finished (an abort or error since the last step counts too)."""
        if self.compiling:
            self._queue_compiled()
        batch = self.scheduler.schedule()
        if batch.is_empty:
            output, finished = StepOutput.empty(), self.scheduler.update_from_output(batch, [])
        else:
            sampled, logprobs = self._execute(batch)
            finished = self.scheduler.update_from_output(batch, sampled)
            output = _gains(batch.requests, sampled, logprobs)
            if batch.scores_prompts:
                self._attach_prompt_logprobs(output)
        output.add_finished(finished)
        return output

    def _attach_prompt_logprobs(self, output: StepOutput) -> None:
        """Prompt logprobs go out with a request's first token (it may have finished with it, and
        left the scoring set already); it then stops scoring."""
        output.prompt_logprobs = [
            r.prompt_logprobs if r.params.prompt_logprobs is not None and len(r.token_ids) == r.prompt_len + 1
            else NO_LOGPROBS for r in output.requests]
        self.scheduler.scoring.difference_update(output.requests)

    def _queue_compiled(self) -> None:
        """Queue the requests whose matcher is ready; end those whose grammar failed. With nothing
        else to run, wait a moment for one (instead of spinning through empty steps)."""
        if not self.scheduler.has_work():
            concurrent.futures.wait([future for _, future in self.compiling.values()], timeout=COMPILE_WAIT_S,
                                    return_when=concurrent.futures.FIRST_COMPLETED)
        for rid, (request, future) in list(self.compiling.items()):
            if not future.done():
                continue
            del self.compiling[rid]
            try:
                request.matcher = future.result()
            except Exception as exc:  # noqa: BLE001 (GrammarError, or llguidance refusing the vocabulary: this request's)
                self.scheduler.end_unqueued(request, FinishReason.ERROR,
                                            f"the grammar cannot be enforced: {brief(str(exc))}")
            else:
                self.scheduler.add(request)

    def _execute(self, batch: ScheduledBatch) -> tuple[list[list[int]], list[TokenLogprob | None] | None]:
        """runner.execute; when it raises, the batch is run again in halves, recursively, down to
        the requests that fail alone: those end with an error naming the cause, the others are
        sampled as in one step (a retry that succeeds whole costs one more forward pass)."""
        try:
            return self.runner.execute(batch)
        except Exception as exc:  # noqa: BLE001 (any failure of one request's must not end the others)
            logger.warning("a step of %d requests failed (%s: %s); finding the failing ones", len(batch.requests),
                           type(exc).__name__, exc)
        num_seqs = len(batch.requests)
        sampled: list[list[int]] = [[] for _ in range(num_seqs)]
        logprobs: list[TokenLogprob | None] = [None] * num_seqs

        def run(rows: list[int]) -> None:
            try:
                part_sampled, part_logprobs = self.runner.execute(batch.subset(rows))
            except Exception as exc:  # noqa: BLE001
                if len(rows) > 1:
                    run(rows[:len(rows) // 2])
                    run(rows[len(rows) // 2:])
                    return
                request = batch.requests[rows[0]]
                logger.error("request %d fails the step alone: %s: %s", request.rid, type(exc).__name__, exc)
                self.scheduler.fail(request, f"the engine failed on this request: {type(exc).__name__}: {exc}")
                return
            for i, row in enumerate(rows):
                sampled[row] = part_sampled[i]
                logprobs[row] = None if part_logprobs is None else part_logprobs[i]

        run(list(range(num_seqs)))
        return sampled, (logprobs if any(lp is not None for lp in logprobs) else None)


def _gains(requests: list[Request], sampled: list[list[int]],
           logprobs: list[TokenLogprob | None] | None) -> StepOutput:
    """The scheduled requests that gained tokens, with them (and their logprobs, also kept on the request)."""
    if not all(sampled):  # prompt chunks short of their end gained nothing
        rows = [i for i, new_ids in enumerate(sampled) if new_ids]
        requests, sampled = [requests[i] for i in rows], [sampled[i] for i in rows]
        logprobs = None if logprobs is None else [logprobs[i] for i in rows]
    if logprobs is None:
        new_logprobs = [NO_LOGPROBS] * len(requests)
    else:
        new_logprobs = [NO_LOGPROBS if logprob is None else [logprob] for logprob in logprobs]
        for request, logprob in zip(requests, logprobs):
            if logprob is not None:
                request.logprobs.append(logprob)
    return StepOutput(list(requests), list(sampled), new_logprobs)

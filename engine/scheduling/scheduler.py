"""Continuous batching on `num_computed_tokens`: no prefill or decode phase.

Each step spends a token budget over running requests first (decodes cost one token, or one plus
their draft tokens when speculating, unfinished prompts a chunk), then admits waiting ones. When
KV blocks run out the newest running request is preempted: its blocks are freed and it is
recomputed later (its sampled tokens are kept). Pure Python: no torch.
"""

from __future__ import annotations

from collections import deque

from engine.scheduling.block_manager import BlockManager
from engine.scheduling.request import Request, RequestStatus
from engine.scheduling.scheduled_batch import ScheduledBatch
from engine.speculative.drafter import Drafter
from shared.grammar_errors import brief
from shared.sampling import FinishReason


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, drafter: Drafter | None = None) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admission order: the last is preempted first
        self.requests: dict[int, Request] = {}
        self.newly_finished: list[Request] = []  # finished outside a step (errors, aborts)
        self.scoring: set[Request] = set()  # running, asked for prompt logprobs, no token yet
        self.num_preemptions = 0
        self.num_cache_queries = 0  # prompt tokens looked up in the prefix cache at admission
        self.num_cache_hits = 0  # of those, tokens served from it
        self.drafter = drafter  # None: no speculative decoding

    # --- admission ------------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        if request.rid in self.requests:
            raise ValueError(f"request id {request.rid} is already in the engine")
        self.requests[request.rid] = request
        max_blocks = self.block_manager.num_blocks
        if request.num_tokens >= self.max_model_len:
            self._finish(request, FinishReason.ERROR, f"prompt has {request.num_tokens} tokens; the "
                         f"context holds {self.max_model_len} (prompt + at least one generated token)")
        elif self.block_manager.num_blocks_for(request.num_tokens + 1) > max_blocks:
            self._finish(request, FinishReason.ERROR, f"prompt needs more KV blocks than the cache "
                         f"has ({max_blocks} blocks of {self.block_manager.block_size} tokens)")
        else:
            self.waiting.append(request)

    def abort(self, rid: int) -> None:
        """Finish `rid` as aborted and free its blocks; unknown or finished ids are ignored."""
        request = self.requests.get(rid)
        if request is not None and not request.is_finished:
            self._finish(request, FinishReason.ABORT)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def fail(self, request: Request, error: str) -> None:
        """End `request` with ERROR and free its blocks (a step it was in failed because of it)."""
        if not request.is_finished:
            self._finish(request, FinishReason.ERROR, error, error_code=500)

    # --- one step -------------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch:
        num_draft = self.drafter.draft(self.running) if self.drafter is not None else 0
        batch = self._schedule_all_running(num_draft)
        if batch is None:
            batch = self._schedule_running_in_turn()
        if batch.num_preempted == 0:
            self._admit_waiting(batch, self.max_num_batched_tokens - batch.num_tokens)
        batch.scores_prompts = bool(self.scoring)
        return batch

    def _schedule_all_running(self, num_draft: int) -> ScheduledBatch | None:
        """The usual step: every running request's remaining tokens fit the budget and the free
        blocks, so each is scheduled whole, and only those that need blocks or hashing see the
        block manager (a few a step: one request in block_size crosses a block per decode).
        None when they do not all fit: the request-by-request path then cuts and preempts."""
        running = self.running
        if num_draft:
            demand = [len(r.token_ids) + len(r.draft_ids) - r.num_computed_tokens for r in running]
        else:
            demand = [len(r.token_ids) - r.num_computed_tokens for r in running]
        if sum(demand) > self.max_num_batched_tokens:
            return None
        for index in self.block_manager.needing_allocation(running, demand):
            if not self.block_manager.allocate(running[index], demand[index]):
                return None  # what was allocated stays: the other path's allocate finds it there
        # each whole: each samples
        return ScheduledBatch(list(running), demand, list(range(len(running))), num_draft_tokens=num_draft)

    def _schedule_running_in_turn(self) -> ScheduledBatch:
        """Running requests in admission order, each cut to the budget left; when blocks run out
        the newest is preempted (possibly the one at hand). Short of budget or blocks, draft tokens
        are the first thing given up: no request speculates this step."""
        self._drop_drafts()
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(len(request.token_ids) - request.num_computed_tokens, budget)
            if not self._allocate_or_preempt(request, num_new, batch):
                continue  # `request` itself was preempted (or failed); the list shrank
            batch.add(request, num_new)
            budget -= num_new
            index += 1
        return batch

    def _drop_drafts(self) -> None:
        for request in self.running:
            if request.draft_ids:
                request.draft_ids = []
                self.block_manager.release_tail(request, len(request.token_ids))

    def _allocate_or_preempt(self, request: Request, num_new: int, batch: ScheduledBatch) -> bool:
        while not self.block_manager.allocate(request, num_new):
            victim = self.running[-1]
            if victim is request and len(self.running) == 1:
                self._fail_too_large(request)
                return False
            self._preempt(victim, batch)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request, batch: ScheduledBatch) -> None:
        # The victim is the last running request, never one already scheduled this step.
        self.running.remove(request)
        self.scoring.discard(request)
        self.block_manager.free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        batch.num_preempted += 1
        self.num_preemptions += 1

    def _fail_too_large(self, request: Request) -> None:
        """Every block is free and `request` still does not fit: it never will."""
        self._finish(request, FinishReason.ERROR, "the KV cache is too small for this request "
                     f"({self.block_manager.num_blocks} blocks of {self.block_manager.block_size})")

    def _admit_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            # A prompt to score is computed whole: cached blocks would skip the positions it needs.
            scores_prompt = request.params.prompt_logprobs is not None
            cached = [] if scores_prompt else self.block_manager.find_cached_prefix(request.token_ids)
            num_computed = len(cached) * self.block_manager.block_size
            num_new = min(request.num_tokens - num_computed, budget)
            if not self.block_manager.allocate(request, num_new, cached):
                if not self.running:
                    self._fail_too_large(request)
                    continue
                break  # wait for blocks to free up; FCFS, no skipping ahead
            self.waiting.popleft()
            request.num_computed_tokens = num_computed
            self.num_cache_queries += request.num_tokens
            self.num_cache_hits += num_computed
            if request.num_preemptions == 0:
                request.num_cached_tokens = num_computed
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            if scores_prompt and request.num_tokens == request.prompt_len:
                self.scoring.add(request)
            batch.add(request, num_new)
            budget -= num_new

    def update_from_output(self, batch: ScheduledBatch, sampled: list[list[int]]) -> list[Request]:
        """Advance each scheduled request; `sampled[i]` holds the tokens request i gained: [] for a
        prompt chunk that did not reach the end, one token, or with draft tokens the accepted ones
        and the model's next. Tokens past one that ends the request are deleted from `sampled[i]`.
        Returns the requests that finished this step (including any finished outside a step since
        the last call)."""
        finished_status, max_model_len = RequestStatus.FINISHED, self.max_model_len
        for request, num_new, new_ids in zip(batch.requests, batch.num_new_tokens, sampled):
            if request.status is finished_status:  # aborted while the step ran
                continue
            request.num_computed_tokens += num_new
            if not new_ids:
                continue
            if request.draft_ids:
                self._settle_draft(request, len(new_ids) - 1)
            token_ids = request.token_ids
            for count, token_id in enumerate(new_ids, 1):
                token_ids.append(token_id)
                if token_id in request.stop_ids:
                    self._finish(request, FinishReason.STOP)
                elif request.matcher is not None and self._grammar_ends(request, token_id):
                    pass  # finished there
                elif len(token_ids) >= request.length_limit or len(token_ids) >= max_model_len:
                    self._finish(request, FinishReason.LENGTH)
                else:
                    continue
                del new_ids[count:]
                break
        finished, self.newly_finished = self.newly_finished, []
        return finished

    def _settle_draft(self, request: Request, num_accepted: int) -> None:
        """The KV of the rejected draft tokens is stale: uncount it and release the blocks that
        held only it. The accepted ones are the tokens the model would have produced."""
        self.drafter.record(request, num_accepted)
        request.num_computed_tokens -= len(request.draft_ids) - num_accepted
        request.draft_ids = []
        self.block_manager.release_tail(request, len(request.token_ids) + num_accepted + 1)

    def _grammar_ends(self, request: Request, token_id: int) -> bool:
        """Advance the request's grammar by its new token; True when that ended the request: the
        grammar is complete (STOP), or its matcher failed (ERROR: llguidance bounds the work of each
        token, and a grammar past those bounds, such as thousands of alternatives sharing a prefix,
        cannot be enforced)."""
        matcher = request.matcher
        if not matcher.consume_token(token_id):
            self._finish(request, FinishReason.ERROR, f"the grammar cannot be enforced: {brief(matcher.get_error())}")
            return True
        if matcher.is_stopped():
            self._finish(request, FinishReason.STOP)
            return True
        return False

    def end_unqueued(self, request: Request, reason: FinishReason, error: str | None = None) -> None:
        """Finish a request that never reached the queue (aborted, or its grammar failed, while
        it compiled); it is reported like any other that finished."""
        if request.rid in self.requests:
            raise ValueError(f"request id {request.rid} is already in the engine")
        self.requests[request.rid] = request
        self._finish(request, reason, error)

    def _finish(self, request: Request, reason: FinishReason, error: str | None = None,
                error_code: int = 400) -> None:
        """`error_code` (with an error): 400 unless the engine, not the request, failed."""
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
            self.scoring.discard(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.block_manager.free(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        request.error = error
        request.error_code = error_code if error else 0
        del self.requests[request.rid]
        self.newly_finished.append(request)
        if self.drafter is not None:
            self.drafter.finished(request)

    def check_invariants(self) -> None:
        """Raise AssertionError if scheduler and block manager disagree (for tests)."""
        live = list(self.waiting) + self.running
        assert len(live) == len(self.requests) == len({r.rid for r in live}), "request sets disagree"
        for request in self.running:
            assert request.status is RequestStatus.RUNNING
            assert request.num_computed_tokens <= request.num_tokens
            assert len(request.block_ids) * self.block_manager.block_size >= request.num_computed_tokens
        for request in self.waiting:
            assert request.status is RequestStatus.WAITING and not request.block_ids
        assert len(self.running) <= self.max_num_seqs
        self.block_manager.check_invariants(live)

"""Scheduler: token budgets, chunked prefill mixed with decode, preemption, errors, aborts.
A fake runner samples a fixed token, so these run in milliseconds with no model."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.scheduling.block_manager import BlockManager
from engine.scheduling.request import Request, RequestStatus
from engine.scheduling.scheduler import Scheduler
from engine.speculative.drafter import Drafter
from shared.config import SpeculativeConfig
from shared.sampling import FinishReason, SamplingParams

BLOCK = 4
EOS = 0


def make_scheduler(num_blocks: int = 64, max_num_seqs: int = 8, budget: int = 16,
                   max_model_len: int = 256, drafter: Drafter | None = None) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, BLOCK), max_num_seqs, budget, max_model_len, drafter)


def make_request(rid: int, prompt_len: int, max_tokens: int = 4, first_token: int = 1,
                 temperature: float = 1.0) -> Request:
    prompt = list(range(first_token, first_token + prompt_len))
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, temperature=temperature), seed=0,
                   eos_token_ids=frozenset({EOS}))


def step(scheduler: Scheduler, token: int = 7, accept: random.Random | None = None
         ) -> tuple[list[tuple[int, int]], list[Request]]:
    """One engine step with a fake runner: every sampling request draws `token`, after a random
    prefix of its draft tokens (`accept`). Returns ([(rid, num_new_tokens)], finished)."""
    batch = scheduler.schedule()
    sampled = [[] for _ in batch.requests]
    for row in batch.sampling_rows:
        draft = batch.requests[row].draft_ids
        sampled[row] = draft[:accept.randint(0, len(draft)) if accept else 0] + [token]
    finished = scheduler.update_from_output(batch, sampled)
    scheduler.check_invariants()
    return list(zip([r.rid for r in batch.requests], batch.num_new_tokens)), finished


def test_long_prompt_is_chunked_by_the_token_budget():
    scheduler = make_scheduler(budget=8)
    request = make_request(0, prompt_len=20)
    scheduler.add(request)
    assert step(scheduler)[0] == [(0, 8)]
    assert request.num_output_tokens == 0  # a chunk that does not reach the end samples nothing
    assert step(scheduler)[0] == [(0, 8)]
    assert step(scheduler)[0] == [(0, 4)]
    assert request.output_ids == [7]
    assert step(scheduler)[0] == [(0, 1)]  # decode


def test_prefill_chunks_mix_with_decodes_in_one_step():
    scheduler = make_scheduler(budget=10)
    first = make_request(0, prompt_len=6)
    scheduler.add(first)
    assert step(scheduler)[0] == [(0, 6)]
    second = make_request(1, prompt_len=30, first_token=100)
    scheduler.add(second)
    assert step(scheduler)[0] == [(0, 1), (1, 9)]  # running decode first, then a chunk of the rest
    assert step(scheduler)[0] == [(0, 1), (1, 9)]


def test_max_num_seqs_caps_the_running_set():
    scheduler = make_scheduler(max_num_seqs=2, budget=64)
    for rid in range(3):
        scheduler.add(make_request(rid, prompt_len=4, first_token=10 * rid + 1))
    assert [rid for rid, _ in step(scheduler)[0]] == [0, 1]
    assert [r.rid for r in scheduler.waiting] == [2]


def test_finishes_on_max_tokens_eos_and_stop_ids():
    scheduler = make_scheduler()
    scheduler.add(make_request(0, prompt_len=3, max_tokens=2))
    step(scheduler)
    _, finished = step(scheduler)
    assert [(r.rid, r.finish_reason) for r in finished] == [(0, FinishReason.LENGTH)]
    scheduler.add(make_request(1, prompt_len=3))
    _, finished = step(scheduler, token=EOS)
    assert [(r.rid, r.finish_reason) for r in finished] == [(1, FinishReason.STOP)]
    stop = Request(2, [5, 6], SamplingParams(stop_token_ids=[9]), 0, frozenset({EOS}))
    scheduler.add(stop)
    _, finished = step(scheduler, token=9)
    assert finished == [stop] and stop.finish_reason is FinishReason.STOP
    assert scheduler.block_manager.num_free_blocks == 64


def test_ignore_eos_keeps_going():
    scheduler = make_scheduler()
    request = Request(0, [5, 6], SamplingParams(max_tokens=3, ignore_eos=True), 0, frozenset({EOS}))
    scheduler.add(request)
    for _ in range(2):
        assert step(scheduler, token=EOS)[1] == []
    assert step(scheduler, token=EOS)[1] == [request] and request.finish_reason is FinishReason.LENGTH


def test_context_limit_finishes_with_length():
    scheduler = make_scheduler(max_model_len=8)
    request = make_request(0, prompt_len=6, max_tokens=100)
    scheduler.add(request)
    step(scheduler)
    _, finished = step(scheduler)
    assert finished == [request] and request.num_tokens == 8 and request.finish_reason is FinishReason.LENGTH


def test_preemption_frees_the_newest_and_recomputes_it():
    scheduler = make_scheduler(num_blocks=4, budget=64)  # 16 token slots in all
    old, new = make_request(0, 8, max_tokens=6), make_request(1, 8, max_tokens=6, first_token=50)
    scheduler.add(old)
    scheduler.add(new)
    step(scheduler)  # both prompts: 2 blocks each, cache full
    assert scheduler.block_manager.num_free_blocks == 0
    scheduled, _ = step(scheduler)  # both need a third block: the newest is preempted
    assert scheduled == [(0, 1)]
    assert new.status is RequestStatus.WAITING and new.block_ids == [] and new.num_computed_tokens == 0
    assert new.output_ids == [7]  # sampled tokens survive preemption
    assert scheduler.num_preemptions == 1
    finished_rids = []
    for _ in range(30):
        finished_rids += [r.rid for r in step(scheduler)[1]]
        if not scheduler.has_work():
            break
    assert finished_rids == [0, 1]
    assert old.output_ids == [7] * 6 and new.output_ids == [7] * 6
    assert scheduler.block_manager.num_free_blocks == 4


def test_prompt_that_can_never_fit_finishes_with_an_error():
    scheduler = make_scheduler(num_blocks=2)
    request = make_request(0, prompt_len=9)  # needs 3 blocks, the cache has 2
    scheduler.add(request)
    _, finished = step(scheduler)
    assert finished == [request] and request.finish_reason is FinishReason.ERROR
    assert "KV blocks" in request.error
    assert not scheduler.has_work()


def test_growth_past_the_whole_cache_finishes_with_an_error():
    scheduler = make_scheduler(num_blocks=2, budget=64)
    request = make_request(0, prompt_len=7, max_tokens=50)
    scheduler.add(request)
    finished = []
    for _ in range(5):
        finished += step(scheduler)[1]
    assert finished == [request] and request.finish_reason is FinishReason.ERROR
    assert "too small" in request.error and request.num_tokens == 9  # 2 sampled, the 3rd has no slot
    assert scheduler.block_manager.num_free_blocks == 2


def test_prompt_over_the_context_finishes_with_an_error():
    scheduler = make_scheduler(max_model_len=10)
    request = make_request(0, prompt_len=10)
    scheduler.add(request)
    assert step(scheduler) == ([], [request])
    assert "context" in request.error


def test_abort_frees_blocks_and_is_idempotent():
    scheduler = make_scheduler()
    running, waiting = make_request(0, 6), make_request(1, 6, first_token=40)
    scheduler.add(running)
    step(scheduler)
    scheduler.add(waiting)
    scheduler.abort(0)
    scheduler.abort(1)
    scheduler.abort(1)
    scheduler.abort(12345)
    _, finished = step(scheduler)
    assert [r.finish_reason for r in finished] == [FinishReason.ABORT, FinishReason.ABORT]
    assert scheduler.block_manager.num_free_blocks == 64 and not scheduler.has_work()


def test_prefix_cache_hit_counts_cached_tokens():
    scheduler = make_scheduler(budget=64)
    scheduler.add(make_request(0, prompt_len=13, max_tokens=1))
    step(scheduler)
    twin = make_request(1, prompt_len=13, max_tokens=1)
    scheduler.add(twin)
    assert step(scheduler)[0] == [(1, 1)]  # 12 tokens (3 full blocks) from cache
    assert twin.num_cached_tokens == 12
    assert (scheduler.num_cache_queries, scheduler.num_cache_hits) == (26, 12)


actions = st.lists(st.tuples(st.sampled_from(["add", "step", "step", "abort"]), st.integers(1, 40),
                             st.integers(0, 3)), max_size=80)


@pytest.mark.parametrize("speculative", [False, True], ids=["plain", "drafts"])
@settings(max_examples=100, deadline=None)
@given(script=actions)
def test_random_traffic_keeps_invariants_and_always_drains(speculative, script):
    """With drafts: greedy requests, drafted for whenever their last token recurred, each draft
    accepted up to a random point."""
    drafter = Drafter(SpeculativeConfig(num_speculative_tokens=3, prompt_lookup_min=1), 48) if speculative else None
    scheduler = make_scheduler(num_blocks=12, max_num_seqs=4, budget=12, max_model_len=48, drafter=drafter)
    accept = random.Random(len(script)) if speculative else None
    rid = 0
    for action, size, pick in script:
        if action == "add":
            scheduler.add(make_request(rid, prompt_len=size, max_tokens=1 + pick * 5, first_token=pick * 3 + 1,
                                       temperature=0.0 if speculative else 1.0))
            rid += 1
        elif action == "abort" and scheduler.requests:
            scheduler.abort(sorted(scheduler.requests)[pick % len(scheduler.requests)])
        else:
            step(scheduler, accept=accept)
        scheduler.check_invariants()
    for _ in range(2000):  # everything finishes: nothing is dropped or stuck
        if not scheduler.has_work():
            break
        step(scheduler, accept=accept)
    assert not scheduler.has_work() and not scheduler.requests
    assert scheduler.block_manager.num_free_blocks == 12

"""Speculative decoding without a model: the n-gram lookup, greedy verification, the config, and
the scheduler's bookkeeping of draft tokens (blocks, budget, rejected KV)."""

from __future__ import annotations

import pytest

from engine.scheduling.block_manager import BlockManager
from engine.scheduling.request import Request
from engine.scheduling.scheduler import Scheduler
from engine.speculative import ngram_proposer
from engine.speculative.drafter import Drafter
from engine.speculative.output_cache import OutputCache
from engine.speculative.verification import accepted_tokens
from shared.config import EngineConfig, SpeculativeConfig
from shared.sampling import FinishReason, SamplingParams


def propose(token_ids: list[int], num_tokens: int = 4, min_n: int = 2, max_n: int = 5) -> list[int]:
    return ngram_proposer.propose(token_ids, ngram_proposer.TokenIndex(), num_tokens, min_n, max_n)


def test_lookup_continues_the_latest_longest_match():
    #            0  1  2  3  4  5  6  7  8  9 10 11
    tokens = [1, 2, 3, 9, 9, 2, 3, 7, 7, 1, 2, 3]
    assert propose(tokens) == [9, 9, 2, 3]  # "1 2 3" (n=3) beats the later "2 3" (n=2)
    assert propose([5, 2, 3, 8, 6, 2, 3]) == [8, 6, 2, 3]
    assert propose([4, 2, 3, 8, 4, 2, 3, 9, 1, 2, 3]) == [9, 1, 2, 3]  # "4 2 3" is no suffix; latest "2 3"


def test_lookup_needs_min_n_and_respects_the_token_count():
    assert propose([1, 2, 3, 4, 5, 3]) == []  # "3" alone: shorter than min_n
    assert propose([1, 2, 3, 4, 5, 3], min_n=1) == [4, 5, 3]
    assert propose([7, 8, 1, 2, 3, 4, 7, 8], num_tokens=2) == [1, 2]
    assert propose([1]) == []


def test_index_grows_with_the_sequence():
    index = ngram_proposer.TokenIndex()
    tokens = [1, 2, 3]
    assert ngram_proposer.propose(tokens, index, 4, 2, 5) == []
    tokens += [4, 1, 2]
    assert ngram_proposer.propose(tokens, index, 4, 2, 5) == [3, 4, 1, 2]
    assert index.num_indexed == 6


def test_the_output_cache_continues_the_longest_latest_match_and_forgets_the_oldest():
    cache = OutputCache(capacity=2, key_len=2, max_n=4)
    cache.add([1, 2, 3, 4, 5])
    cache.add([9, 2, 3, 7, 8])
    assert cache.propose([0, 2, 3], 3) == [7, 8]  # "2 3" in both: the latest output wins
    assert cache.propose([1, 2, 3], 3) == [4, 5]  # "1 2 3" matches longer in the first
    assert cache.propose([5, 6], 3) == [] and cache.propose([3], 3) == []  # no match; shorter than a key
    cache.add([6, 6, 6])
    assert list(cache.outputs.values()) == [[9, 2, 3, 7, 8], [6, 6, 6]]
    assert cache.propose([1, 2, 3], 3) == [7, 8]  # the first output is forgotten ...
    assert (1, 2) not in cache.index and (3, 4) not in cache.index  # ... and so is its index
    assert cache.propose([6, 6], 3) == [6]


def test_verification_keeps_the_agreeing_prefix_and_the_models_next_token():
    assert accepted_tokens([5, 6, 7], [5, 6, 7, 8]) == [5, 6, 7, 8]
    assert accepted_tokens([5, 6, 7], [5, 9, 7, 8]) == [5, 9]
    assert accepted_tokens([5, 6, 7], [4, 6, 7, 8]) == [4]
    assert accepted_tokens([], [3]) == [3]


def test_speculative_config_parses_vllm_json_and_names_what_is_wrong():
    config = SpeculativeConfig.from_json('{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}')
    assert (config.num_speculative_tokens, config.prompt_lookup_min, config.prompt_lookup_max) == (3, 2, 4)
    assert SpeculativeConfig.from_json(config.to_json()) == config
    for text, message in [('{"method": "eagle"}', "must be one of ngram, suffix"), ("[1]", "JSON object"),
                          ('{"num_speculative_tokens": 0}', "positive"), ("{bad", "not valid JSON"),
                          ('{"prompt_lookup_min": 6}', "more than prompt_lookup_max"),
                          ('{"draft_tokens": 4}', "unknown key(s) draft_tokens")]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            SpeculativeConfig.from_json(text)
    assert EngineConfig(speculative=config).speculative is config


BLOCK = 4


def scheduler(num_blocks: int = 32, budget: int = 64, disable_by_batch_size: int = 4) -> Scheduler:
    drafter = Drafter(SpeculativeConfig(num_speculative_tokens=3, prompt_lookup_min=1,
                                        disable_by_batch_size=disable_by_batch_size), max_model_len=64)
    return Scheduler(BlockManager(num_blocks, BLOCK), max_num_seqs=8, max_num_batched_tokens=budget,
                     max_model_len=64, drafter=drafter)


def greedy_request(rid: int, prompt: list[int], max_tokens: int = 20, **params) -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, **params), 0, frozenset())


def decode_one(s: Scheduler, token: int) -> Request:
    """Run the prompt step of the only request, giving it `token`."""
    batch = s.schedule()
    s.update_from_output(batch, [[token]])
    return batch.requests[0]


def test_a_draft_is_scheduled_verified_and_its_rejected_kv_released():
    s = scheduler()
    s.add(greedy_request(0, [1, 2, 3, 4, 5, 6, 1, 2]))
    request = decode_one(s, 3)  # tokens ...1 2 3: "1 2 3" recurs, followed by 4 5 6
    batch = s.schedule()
    assert request.draft_ids == [4, 5, 6] and batch.num_new_tokens == [4] and batch.num_draft_tokens == 3
    assert batch.sampling_rows == [0]
    assert len(request.block_ids) == 3  # 9 known + 3 drafted = 12 tokens: 3 blocks
    new_ids = [4, 7]  # the model agrees with "4", then says 7
    s.update_from_output(batch, [new_ids])
    assert request.token_ids[-2:] == [4, 7] and new_ids == [4, 7]
    assert request.num_computed_tokens == len(request.token_ids) - 1 == 10  # the KV of 5 and 6 is stale
    assert request.draft_ids == [] and len(request.block_ids) == 3  # 11 tokens still need 3 blocks
    assert (s.drafter.num_drafts, s.drafter.num_draft_tokens, s.drafter.num_accepted_tokens) == (1, 3, 1)
    assert s.drafter.accepted_per_position == [1, 0, 0]
    s.check_invariants()


def test_rejected_draft_blocks_go_back_to_the_free_queue():
    s = scheduler()
    s.add(greedy_request(0, [9, 1, 2, 3, 4, 5, 6, 7, 1]))
    request = decode_one(s, 2)  # 10 tokens, 9 computed
    batch = s.schedule()
    assert request.draft_ids == [3, 4, 5]  # 13 tokens computed this step: 4 blocks
    assert len(request.block_ids) == 4 and s.block_manager.num_free_blocks == 28
    s.update_from_output(batch, [[8]])  # the model disagrees at once
    assert request.num_computed_tokens == 10 and request.token_ids[-1] == 8
    assert len(request.block_ids) == 3 and s.block_manager.num_free_blocks == 29  # 11 tokens: 3 blocks
    s.check_invariants()


def test_a_stop_inside_an_accepted_draft_ends_there():
    s = scheduler()
    s.add(greedy_request(0, [1, 2, 3, 4, 5, 6, 1, 2], stop_token_ids=[5]))
    request = decode_one(s, 3)
    batch = s.schedule()
    new_ids = [4, 5, 6, 8]
    finished = s.update_from_output(batch, [new_ids])
    assert finished == [request] and request.finish_reason is FinishReason.STOP
    assert new_ids == [4, 5] and request.output_ids == [3, 4, 5]
    assert s.block_manager.num_free_blocks == 32


def test_max_tokens_bounds_the_draft():
    s = scheduler()
    s.add(greedy_request(0, [1, 2, 3, 4, 5, 6, 1, 2], max_tokens=3))
    request = decode_one(s, 3)  # 1 output; 2 more allowed: a draft of at most 1, then the model's token
    s.schedule()
    assert request.draft_ids == [4]


def test_no_drafts_where_more_than_logits_decide_for_large_batches_or_a_short_budget():
    s = scheduler(disable_by_batch_size=1)
    scored = Request(0, [1, 2, 1, 2], SamplingParams(max_tokens=9, temperature=0.8, logprobs=1), 0, frozenset())
    s.add(scored)
    s.update_from_output(s.schedule(), [[1]])
    s.schedule()
    assert scored.draft_ids == []  # its logprobs come one token a step
    sampled = Request(9, [1, 2, 1, 2], SamplingParams(max_tokens=9, temperature=0.8), 0, frozenset())
    assert sampled.draftable and not sampled.plain_greedy
    s.add(greedy_request(1, [1, 2, 1, 2]))
    s.update_from_output(s.schedule(), [[2], [1]])
    batch = s.schedule()  # two running, drafting disabled above one
    assert batch.num_draft_tokens == 0
    tight = scheduler(budget=2)
    tight.add(greedy_request(0, [1, 2]))
    request = decode_one(tight, 1)  # 1 2 1: "1" recurs, a draft of 2 1 would make 3 tokens
    batch = tight.schedule()  # a budget of 2: the draft is given up, the request decodes
    assert request.draft_ids == [] and batch.num_new_tokens == [1] and batch.num_draft_tokens == 0
    tight.check_invariants()

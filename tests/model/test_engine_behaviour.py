"""InferenceEngine on the real embedded model: prefix caching, preemption, seeded sampling,
streaming, logprobs, limits."""

from __future__ import annotations

import asyncio

import llguidance
import pytest

from engine import InferenceEngine, SamplingParams
from tests.model.prompts import long_text

GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)


def test_prefix_cache_serves_a_shared_1000_token_prefix(smollm2):
    prefix = smollm2.tokenizer.encode(long_text())[:1000]
    assert len(prefix) == 1000
    smollm2.core.scheduler.block_manager.reset_prefix_cache()  # the shared engine may have seen this text
    first = smollm2.generate(prefix + smollm2.tokenizer.encode(" First question?"), GREEDY)
    second_prompt = prefix + smollm2.tokenizer.encode(" Second question, different?")
    cached = smollm2.generate(second_prompt, GREEDY)
    assert first.num_cached_tokens < 16  # nothing shared before
    assert cached.num_cached_tokens >= 992
    smollm2.core.scheduler.block_manager.reset_prefix_cache()
    uncached = smollm2.generate(second_prompt, GREEDY)
    assert uncached.num_cached_tokens == 0
    assert cached.token_ids == uncached.token_ids


@pytest.fixture(scope="module")
def tiny_cache_engine(gguf_path):
    """Same model, a KV cache of 12 blocks (192 tokens): eight requests cannot all fit."""
    return InferenceEngine.from_pretrained(gguf_path, dtype="float32", num_kv_blocks=12,
                                           enable_prefix_caching=False)


def test_preemption_gives_the_same_tokens_as_a_big_cache(smollm2, tiny_cache_engine):
    prompts = [f"Story {i}: once upon a time, a {word} decided to" for i, word in
               enumerate(["fox", "robot", "sailor", "baker", "comet", "violin", "glacier", "monk"])]
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    big = smollm2.generate(prompts, params)
    small = tiny_cache_engine.generate(prompts, params)
    assert tiny_cache_engine.core.scheduler.num_preemptions > 0, "the test must actually preempt"
    assert [o.token_ids for o in small] == [o.token_ids for o in big]
    assert all(o.finish_reason == "length" for o in small)
    assert tiny_cache_engine.core.scheduler.block_manager.num_free_blocks == 12


def test_preempted_constrained_requests_keep_to_their_grammar(smollm2, tiny_cache_engine):
    """Recomputed after preemption, a constrained request's matcher is where its tokens left it (and
    its prompt is not scored twice)."""
    grammar = llguidance.grammar_from("regex", r"(once upon a time, )+")
    prompts = [f"Story {i}: tell it." for i in range(8)]
    params = SamplingParams(max_tokens=24, temperature=0.0, grammar=grammar, prompt_logprobs=0)
    preemptions = tiny_cache_engine.core.scheduler.num_preemptions
    small = tiny_cache_engine.generate(prompts, params)
    assert tiny_cache_engine.core.scheduler.num_preemptions > preemptions, "the test must actually preempt"
    assert [o.token_ids for o in small] == [o.token_ids for o in smollm2.generate(prompts, params)]
    assert all(o.finish_reason == "length" and o.text.startswith("once upon a time, ") for o in small)
    # Their prompts, recomputed too, were scored once.
    assert all(len(o.prompt_logprobs) == o.num_prompt_tokens - 1 for o in small)


def test_seeded_sampling_is_independent_of_the_batch(smollm2):
    params = SamplingParams(max_tokens=16, temperature=0.8, top_p=0.9, seed=1234, ignore_eos=True)
    alone = smollm2.generate("The weather today is", params)
    prompts = [f"Request {i} says" for i in range(8)]
    again = smollm2.generate("The weather today is", params)  # a warm duplicate: the same answer
    mixed = smollm2.generate(prompts[:4] + ["The weather today is"] + prompts[4:], params)
    assert again.token_ids == alone.token_ids
    assert mixed[4].token_ids == alone.token_ids
    different = smollm2.generate("The weather today is", SamplingParams(
        max_tokens=16, temperature=0.8, top_p=0.9, seed=4321, ignore_eos=True))
    assert different.token_ids != alone.token_ids


def test_unseeded_sampling_varies(smollm2):
    params = SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True)
    outs = smollm2.generate(["Tell me a word:"] * 4, params)
    assert len({tuple(o.token_ids) for o in outs}) > 1


def test_stream_yields_the_same_text_as_generate(smollm2):
    prompt = smollm2.apply_chat_template([{"role": "user", "content": "Say hello in French."}], tokenize=True)
    params = SamplingParams(max_tokens=20, temperature=0.0)
    expected = smollm2.generate(prompt, params).text

    async def collect() -> list[str]:
        return [piece async for piece in smollm2.generate_stream(prompt, params)]

    pieces = asyncio.run(collect())
    assert len(pieces) > 1 and "".join(pieces) == expected


def test_concurrent_streams_share_steps_and_early_exit_frees_blocks(smollm2):
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)

    async def first_piece(prompt: str) -> str:
        async for piece in smollm2.generate_stream(prompt, params):
            return piece  # leave early: the request must be aborted
        return ""

    async def run() -> list[str]:
        return await asyncio.gather(first_piece("One"), first_piece("Two"), first_piece("Three"))

    assert all(asyncio.run(run()))
    scheduler = smollm2.core.scheduler
    assert not scheduler.requests and scheduler.block_manager.usage == 0.0


def test_logprobs_are_consistent(smollm2):
    out = smollm2.generate("The capital of France is", SamplingParams(max_tokens=5, temperature=0.0, logprobs=3))
    assert len(out.logprobs) == 5
    for token_id, entry in zip(out.token_ids, out.logprobs):
        assert entry.token_id == token_id
        assert entry.top_ids[0] == token_id  # greedy picks the best
        assert entry.logprob == pytest.approx(entry.top_logprobs[0])
        assert entry.top_logprobs == sorted(entry.top_logprobs, reverse=True) and len(entry.top_ids) == 3


def test_min_tokens_and_stop_token_ids(smollm2):
    prompt = smollm2.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], tokenize=True)
    short = smollm2.generate(prompt, SamplingParams(max_tokens=64, temperature=0.0))
    assert short.finish_reason == "stop" and len(short.token_ids) < 20
    longer = smollm2.generate(prompt, SamplingParams(max_tokens=64, temperature=0.0, min_tokens=25))
    assert len(longer.token_ids) >= 25
    stop_at = short.token_ids[1]
    stopped = smollm2.generate(prompt, SamplingParams(max_tokens=64, temperature=0.0, stop_token_ids=[stop_at]))
    assert stopped.token_ids == short.token_ids[:2] and stopped.finish_reason == "stop"


def test_penalties_break_a_repetitive_continuation(smollm2):
    prompt = "one one one one one one one one"  # greedy continues "-to-many-to-many-to-many"
    plain = smollm2.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    penalized = [smollm2.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, **kw))
                 for kw in (dict(repetition_penalty=1.5), dict(frequency_penalty=2.0, presence_penalty=2.0))]

    def most_repeated(ids: list[int]) -> int:
        return max(ids.count(t) for t in ids)

    assert most_repeated(plain.token_ids) >= 4
    for out in penalized:
        assert most_repeated(out.token_ids) < most_repeated(plain.token_ids)


def test_concurrent_generate_calls_from_threads_all_return(smollm2):
    import concurrent.futures

    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(smollm2.generate, [f"Thread {i} says", f"and {i} adds"], params) for i in range(4)]
        results = [f.result(timeout=120) for f in futures]
    assert all(len(out.token_ids) == 6 for pair in results for out in pair)
    assert not smollm2._finished and not smollm2._awaited and not smollm2.core.scheduler.requests


def test_a_refused_stream_leaves_nothing_behind(smollm2):
    async def refused() -> None:
        async for _ in smollm2.stream_tokens([10**9], SamplingParams(max_tokens=2)):
            pass

    with pytest.raises(ValueError, match="outside the vocabulary"):
        asyncio.run(refused())
    assert not smollm2._streams

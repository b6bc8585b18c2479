"""Speculative decoding (n-gram lookup, and suffix: the outputs of earlier requests too) gives,
token for token, what decoding without it gives:
tiny random models of three families and the real embedded model, with chunked prompts,
preemption, stop tokens, and seeded sampled requests (drafted too) sharing steps with greedy ones."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from engine import InferenceEngine, SamplingParams
from engine.loaders.random_weights import random_checkpoint
from engine.model.model_config import ModelConfig
from engine.speculative import verification
from shared.config import EngineConfig, SpeculativeConfig

# min 1: draft whenever the last token recurred, so that drafts are both accepted and rejected
SPEC = SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=1, prompt_lookup_max=4,
                         disable_by_batch_size=8)
FAMILIES = {
    "llama": {},
    "qwen2-biases": dict(architecture="Qwen2ForCausalLM", attention_bias=True),
    "mistral-sliding-window": dict(architecture="MistralForCausalLM", sliding_window=16),
}
PROMPTS = [[(7 * i + 3 * j) % 250 + 1 for j in range(n)] for i, n in enumerate((5, 40, 17, 70, 9, 3))]
GREEDY = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)


def tiny(family: str, **options) -> InferenceEngine:
    config = ModelConfig(**{**dict(architecture="LlamaForCausalLM", vocab_size=256, hidden_size=64,
                                   intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                                   rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=512,
                                   tie_word_embeddings=False), **FAMILIES[family]})
    # a small token budget: long prompts are chunked and share steps with drafted decodes
    engine_config = EngineConfig(**{**dict(dtype="float32", num_kv_blocks=64, max_num_batched_tokens=32), **options})
    return InferenceEngine.from_checkpoint(random_checkpoint(config, seed=5), engine_config)


def token_ids(engine: InferenceEngine, prompts, params: SamplingParams) -> list[list[int]]:
    return [c.token_ids for c in engine.generate(prompts, params)]


def assert_drafts_both_accepted_and_rejected(engine: InferenceEngine) -> None:
    drafter = engine.core.scheduler.drafter
    assert drafter.num_accepted_tokens > 0, "the test must accept draft tokens"
    assert drafter.num_draft_tokens > drafter.num_accepted_tokens, "the test must reject draft tokens"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_tokens_are_the_same_with_drafts(family):
    plain, drafting = tiny(family), tiny(family, speculative=SPEC)
    assert token_ids(drafting, PROMPTS, GREEDY) == token_ids(plain, PROMPTS, GREEDY)
    assert_drafts_both_accepted_and_rejected(drafting)
    assert drafting.core.scheduler.block_manager.num_free_blocks == 64
    drafting.core.scheduler.check_invariants()


def test_preemption_and_stop_tokens_hold_with_drafts():
    plain = tiny("llama")
    expected = token_ids(plain, PROMPTS, GREEDY)
    small = tiny("llama", speculative=SPEC, num_kv_blocks=14, enable_prefix_caching=False)  # 224 tokens
    assert token_ids(small, PROMPTS, GREEDY) == expected
    assert small.core.scheduler.num_preemptions > 0, "the test must actually preempt"
    assert_drafts_both_accepted_and_rejected(small)
    stop = SamplingParams(max_tokens=40, temperature=0.0, stop_token_ids=[expected[0][12]])
    drafting = tiny("llama", speculative=SPEC)
    with_stop = drafting.generate(PROMPTS, stop)
    assert [c.token_ids for c in with_stop] == token_ids(plain, PROMPTS, stop)
    assert with_stop[0].finish_reason == "stop" and with_stop[0].token_ids[-1] == expected[0][12]


def _tokens_by_request(engine: InferenceEngine, params_of) -> dict[int, list[int]]:
    """Every prompt through the engine core at once, request i with params_of(i): its tokens."""
    core = engine.core
    for rid, prompt in enumerate(PROMPTS):
        core.add_request(rid, prompt, params_of(rid))
    tokens: dict[int, list[int]] = {rid: [] for rid in range(len(PROMPTS))}
    while core.has_work():
        output = core.step()
        for request, new_ids in zip(output.requests, output.new_ids):
            tokens[request.rid] += new_ids
    return tokens


SAMPLED = SamplingParams(max_tokens=30, temperature=0.9, top_p=0.95, top_k=50, min_p=0.01, seed=11, ignore_eos=True)


def test_seeded_sampled_requests_draw_the_same_tokens_with_drafts():
    """A draft position draws with its own position's seeded noise, so a sampled request keeps
    exactly its tokens; greedy requests in the same steps keep theirs."""
    def params_of(rid: int) -> SamplingParams:
        return msgspec.structs.replace(SAMPLED, seed=rid) if rid % 2 else GREEDY

    drafting = tiny("llama", speculative=SPEC)
    assert _tokens_by_request(drafting, params_of) == _tokens_by_request(tiny("llama"), params_of)
    assert_drafts_both_accepted_and_rejected(drafting)


def test_a_verifier_that_ignores_the_draw_is_caught(monkeypatch):
    """The check above can fail: accepting every draft token of a sampled request changes its tokens."""
    expected = _tokens_by_request(tiny("llama"), lambda rid: SAMPLED)
    monkeypatch.setattr(verification, "accepted_tokens", lambda draft, target: [*draft, target[len(draft)]])
    assert _tokens_by_request(tiny("llama", speculative=SPEC), lambda rid: SAMPLED) != expected


def test_the_suffix_method_drafts_from_earlier_outputs_and_changes_no_token():
    """The same prompts twice: the second time their own text has no earlier match at first, but
    the first run's outputs do, so more draft tokens are accepted."""
    suffix = dataclasses.replace(SPEC, method="suffix", prompt_lookup_min=2)
    plain, drafting = tiny("llama"), tiny("llama", speculative=suffix)
    expected = token_ids(plain, PROMPTS, GREEDY)
    assert token_ids(drafting, PROMPTS, GREEDY) == expected
    drafter = drafting.core.scheduler.drafter
    first_run = drafter.num_accepted_tokens
    assert token_ids(drafting, PROMPTS, GREEDY) == expected
    assert drafter.num_accepted_tokens - first_run > first_run
    assert len(drafter.outputs.outputs) == 2 * len(PROMPTS)


@pytest.mark.slow
def test_embedded_model_gives_the_same_tokens_with_drafts(gguf_path, smollm2, smollm2_prompts):
    """The golden prompts (one spans several chunks) and text the model copies."""
    drafting = InferenceEngine.from_pretrained(gguf_path, dtype="float32", speculative=SpeculativeConfig())
    copy = smollm2.tokenizer.encode("Repeat this list exactly: apples, pears, plums, figs, dates, limes.\n"
                                    "apples, pears, plums, figs,")
    prompts = [*smollm2_prompts, copy]
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    assert token_ids(drafting, prompts, params) == token_ids(smollm2, prompts, params)
    assert drafting.core.scheduler.drafter.num_accepted_tokens > 0

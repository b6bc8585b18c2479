"""Prompt logprobs (the completions API's echo with logprobs, lm-evaluation-harness's scoring):
every prompt token's logprob given the tokens before it equals transformers', across prefill
chunks, and a prompt that is scored is never served from the prefix cache."""

from __future__ import annotations

import torch

from engine import SamplingParams
from tests.model.prompts import long_text


def test_prompt_logprobs_equal_transformers_across_prefill_chunks(smollm2, hf_smollm2):
    hf_model, _ = hf_smollm2
    prompt = smollm2.tokenizer.encode(long_text())[:700]  # two chunks of the default 512-token budget
    out = smollm2.generate(prompt, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=3))
    with torch.inference_mode():
        expected = hf_model(input_ids=torch.tensor([prompt])).logits[0, :-1].float().log_softmax(-1)  # [P - 1, V]
    assert len(out.prompt_logprobs) == len(prompt) - 1
    assert [e.token_id for e in out.prompt_logprobs] == prompt[1:]
    got = torch.tensor([e.logprob for e in out.prompt_logprobs])
    torch.testing.assert_close(got, expected.gather(1, torch.tensor(prompt[1:])[:, None])[:, 0], atol=2e-3, rtol=0)
    top = torch.tensor([e.top_logprobs for e in out.prompt_logprobs])  # [P - 1, 3]
    torch.testing.assert_close(top, expected.topk(3, dim=-1).values, atol=2e-3, rtol=0)


def test_a_scored_prompt_is_computed_whole_and_scored_once(smollm2):
    prompt = smollm2.tokenizer.encode("Scoring needs every position: the prefix cache holds this already.")
    smollm2.generate(prompt, SamplingParams(max_tokens=1, temperature=0.0))  # now cached
    first = smollm2.generate(prompt, SamplingParams(max_tokens=4, temperature=0.0, prompt_logprobs=0))
    again = smollm2.generate(prompt, SamplingParams(max_tokens=4, temperature=0.0, prompt_logprobs=0))
    assert first.num_cached_tokens == 0 and len(first.prompt_logprobs) == len(prompt) - 1
    assert [e.logprob for e in first.prompt_logprobs] == [e.logprob for e in again.prompt_logprobs]
    assert all(e.top_ids == [] for e in first.prompt_logprobs)

"""Random tiny Llama configs saved by transformers: Forge's logprobs and greedy tokens match."""

from __future__ import annotations

import pytest
import torch

from engine import InferenceEngine, SamplingParams
from tests.model.hf_oracle import compare_until_tie, hf_greedy

VARIANTS = {
    "untied": dict(tie_word_embeddings=False),
    "tied": dict(tie_word_embeddings=True),
    "llama3-rope": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 16}),
}


def _save_tiny_llama(directory, **overrides) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.2, **overrides)  # large weights: decisive logits
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tiny_llama_matches_transformers(variant, tmp_path):
    hf_model = _save_tiny_llama(tmp_path, **VARIANTS[variant])
    engine = InferenceEngine.from_pretrained(str(tmp_path), dtype="float32")
    assert engine.tokenizer is None
    prompt = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    out = engine.generate(prompt, SamplingParams(max_tokens=20, temperature=0.0, logprobs=5, ignore_eos=True))
    hf_ids, margins = hf_greedy(hf_model, prompt, 20)
    n = compare_until_tie(out.token_ids, hf_ids, margins)
    assert n >= 15 and out.token_ids[:n] == hf_ids[:n]
    # Full distributions agree at each compared step, not just the argmax.
    with torch.inference_mode():
        logits = hf_model(torch.tensor([prompt + hf_ids[:n]])).logits[0, len(prompt) - 1:].float()
    reference = logits.log_softmax(-1)  # [n + 1, vocab]
    for step in range(n):
        entry = out.logprobs[step]
        expected = reference[step, entry.top_ids]
        torch.testing.assert_close(torch.tensor(entry.top_logprobs), expected, atol=1e-4, rtol=1e-4)

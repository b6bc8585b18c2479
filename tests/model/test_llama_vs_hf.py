"""Random tiny configs of each family saved by transformers: Forge's logprobs and greedy tokens
match transformers', including positions past a scaled rope's original context."""

from __future__ import annotations

import pytest
import torch

from engine import InferenceEngine, SamplingParams
from tests.model.hf_oracle import compare_until_tie, hf_greedy

_LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0 + i / 10 for i in range(8)],
             "long_factor": [1.5 + i / 4 for i in range(8)], "original_max_position_embeddings": 32}
VARIANTS = {  # name: (transformers config class, overrides, save as PyTorch .bin)
    "llama-untied": ("LlamaConfig", {"tie_word_embeddings": False}, False),
    "llama-tied": ("LlamaConfig", {"tie_word_embeddings": True}, False),
    "llama3-rope": ("LlamaConfig", {"rope_parameters": {
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}, False),
    "mistral-sliding-window": ("MistralConfig", {"sliding_window": 16, "head_dim": 16}, False),
    "qwen2-biases": ("Qwen2Config", {"tie_word_embeddings": True}, False),
    "phi3-longrope-bin": ("Phi3Config", {"rope_parameters": _LONGROPE, "original_max_position_embeddings": 32,
                                         "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}, True),
}


def _save_tiny_model(directory, config_class: str, overrides: dict, as_bin: bool) -> torch.nn.Module:
    import transformers

    config = getattr(transformers, config_class)(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, **overrides)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    if as_bin:
        model.config.save_pretrained(directory)
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "pytorch_model.bin")
    else:
        model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("prompt_len", [24, 40])  # 24: decoding crosses 32, Phi-3's original context
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tiny_model_matches_transformers(variant, prompt_len, tmp_path):
    hf_model = _save_tiny_model(tmp_path, *VARIANTS[variant])
    engine = InferenceEngine.from_pretrained(str(tmp_path), dtype="float32")
    assert type(hf_model).__name__ in engine.description
    assert engine.tokenizer is None
    _assert_matches_transformers(engine, hf_model, prompt_len)


GGUF_VARIANTS = {"llama-untied": "llama", "llama3-rope": "llama", "qwen2-biases": "qwen2",
                 "phi3-longrope-bin": "phi3"}


@pytest.mark.parametrize("prompt_len", [24, 40])
@pytest.mark.parametrize("variant", sorted(GGUF_VARIANTS))
def test_tiny_gguf_of_each_family_matches_transformers(variant, prompt_len, tmp_path):
    """The same tiny models written as GGUF with llama.cpp's layout (names, fused tensors, rotary
    permutation for llama, rope_freqs for llama3 scaling, LongRoPE factor tensors for phi3) give
    transformers' tokens."""
    from tests.model.gguf_writer import write_gguf

    hf_model = _save_tiny_model(tmp_path, *VARIANTS[variant])
    write_gguf(hf_model, tmp_path / "model.gguf", GGUF_VARIANTS[variant])
    engine = InferenceEngine.from_pretrained(str(tmp_path / "model.gguf"), dtype="float32")
    assert type(hf_model).__name__ in engine.description and "GGUF F32" in engine.description
    _assert_matches_transformers(engine, hf_model, prompt_len)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q4_0"])  # with mins, and symmetric
@pytest.mark.parametrize("variant", sorted(GGUF_VARIANTS))
def test_tiny_q4_gguf_of_each_family_keeps_every_layer_4_bit_in_place(variant, qtype, tmp_path):
    """4-bit matrices (llama: permuted q/k rows; untied: a 4-bit head; qwen2: biases; phi3: fused
    qkv and gate/up tensors) kept 4-bit: each layer, applied to the identity, gives transformers'
    weight within 4-bit rounding, row for row; and the whole model's next-token distribution stays
    close to that of the same file dequantized."""
    import gguf

    from engine.model.int4_linear import Int4Linear
    from tests.model.gguf_writer import write_gguf

    hf_model = _save_tiny_model(tmp_path, *VARIANTS[variant])
    write_gguf(hf_model, tmp_path / "model.gguf", GGUF_VARIANTS[variant], gguf.GGMLQuantizationType[qtype])
    engines = {fmt: InferenceEngine.from_pretrained(str(tmp_path / "model.gguf"), dtype="bfloat16",
                                                    quantized_weights=fmt) for fmt in ("float", "int4")}
    kept = {name: m for name, m in engines["int4"].core.runner.model.named_modules() if isinstance(m, Int4Linear)}
    head_kept = not hf_model.config.tie_word_embeddings  # a tied head is the float embedding
    assert len(kept) == 4 * 2 + head_kept and ("lm_head" in kept) == head_kept
    hf_weights = hf_model.state_dict()
    for name, layer in kept.items():
        expected = _hf_tensor(hf_weights, name)  # [N, K] float32, before quantization
        identity = torch.eye(layer.in_features, dtype=torch.bfloat16)  # [K, K]
        with torch.no_grad():
            got = torch.cat([layer(rows) for rows in identity.split(16)]).float().t()  # [N, K] plus bias
        if layer.bias is not None:
            got -= _hf_tensor(hf_weights, name, "bias")[:, None]
        # 4-bit rounding moves a value by up to 1/16 of its block's largest magnitude (Q4_0) or
        # 1/30 of its range (Q4_1); a misplaced row is off by far more
        assert (got - expected).abs().max() <= 0.1 * expected.abs().max(), name
    prompt = torch.randint(0, 256, (24,), generator=torch.Generator().manual_seed(3)).tolist()
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=5)
    kept, dequantized = (engines[fmt].generate(prompt, params).logprobs[0] for fmt in ("int4", "float"))
    # random tiny models are full of near-ties: the pick must be a close contender, not the same token
    assert kept.token_id in dequantized.top_ids
    assert abs(kept.logprob - dequantized.top_logprobs[dequantized.top_ids.index(kept.token_id)]) < 0.3


def _hf_tensor(state: dict[str, torch.Tensor], name: str, kind: str = "weight") -> torch.Tensor:
    """The transformers weight (or bias) of Forge's layer `name`, q/k/v and gate/up stacked as
    Forge fuses them."""
    prefix = "" if name == "lm_head" else "model."
    if f"{prefix}{name}.{kind}" in state:
        return state[f"{prefix}{name}.{kind}"].float()
    parts = ("q_proj", "k_proj", "v_proj") if name.endswith("qkv_proj") else ("gate_proj", "up_proj")
    whole = name.rpartition(".")[2]
    return torch.cat([state[f"{prefix}{name.replace(whole, part)}.{kind}"] for part in parts]).float()


def _assert_matches_transformers(engine: InferenceEngine, hf_model: torch.nn.Module, prompt_len: int) -> None:
    # Seed 3: transformers' own top-2 margin exceeds 1e-3 at all 20 steps of every variant (checked),
    # so every token must match.
    prompt = torch.randint(0, 256, (prompt_len,), generator=torch.Generator().manual_seed(3)).tolist()
    out = engine.generate(prompt, SamplingParams(max_tokens=20, temperature=0.0, logprobs=5, ignore_eos=True))
    reference: list[torch.Tensor] = []  # per step [vocab], from transformers' own incremental decode
    hf_ids, margins = hf_greedy(hf_model, prompt, 20, reference)
    n = compare_until_tie(out.token_ids, hf_ids, margins)
    assert n == 20 and out.token_ids == hf_ids
    for step in range(n):  # full distributions agree at each step, not just the argmax
        entry = out.logprobs[step]
        expected = reference[step][entry.top_ids]
        torch.testing.assert_close(torch.tensor(entry.top_logprobs), expected, atol=1e-4, rtol=1e-4)

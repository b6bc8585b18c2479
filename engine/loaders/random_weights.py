"""Random weights for a given architecture: tests and benchmarks with no checkpoint at hand."""

from __future__ import annotations

import torch

from engine.loaders.checkpoint import Checkpoint, WeightStream
from engine.model.model_config import ModelConfig


def random_checkpoint(config: ModelConfig, seed: int = 0, device: str = "cpu") -> Checkpoint:
    """Normal(0, 0.02) weights (norms near 1), drawn on `device`: on a GPU, an 8B model's worth
    takes seconds instead of minutes. The same seed gives the same weights on the same device."""
    description = f"random weights ({config.architecture}, {config.num_params / 1e6:.0f}M params)"
    return Checkpoint(config, lambda: _weights(config, seed, torch.device(device)), None, description)


def _weights(config: ModelConfig, seed: int, device: torch.device) -> WeightStream:
    generator = torch.Generator(device).manual_seed(seed)
    hidden, head_dim = config.hidden_size, config.head_dim

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device) * 0.02

    yield "model.embed_tokens.weight", normal(config.vocab_size, hidden)
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}"
        yield f"{prefix}.input_layernorm.weight", 1.0 + normal(hidden)
        yield f"{prefix}.post_attention_layernorm.weight", 1.0 + normal(hidden)
        for part, rows in (("q_proj", config.num_heads), ("k_proj", config.num_kv_heads),
                           ("v_proj", config.num_kv_heads)):
            yield f"{prefix}.self_attn.{part}.weight", normal(rows * head_dim, hidden)
            if config.attention_bias:
                yield f"{prefix}.self_attn.{part}.bias", normal(rows * head_dim)
        yield f"{prefix}.self_attn.o_proj.weight", normal(hidden, config.num_heads * head_dim)
        yield f"{prefix}.mlp.gate_proj.weight", normal(config.intermediate_size, hidden)
        yield f"{prefix}.mlp.up_proj.weight", normal(config.intermediate_size, hidden)
        yield f"{prefix}.mlp.down_proj.weight", normal(hidden, config.intermediate_size)
    yield "model.norm.weight", 1.0 + normal(hidden)
    if not config.tie_word_embeddings:
        yield "lm_head.weight", normal(config.vocab_size, hidden)

"""Rotary position embeddings (the `rotate_half` layout of Hugging Face checkpoints)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class RopeTables:
    """cos/sin for every position, [max_len, head_dim] float32 each. LongRoPE (Phi-3) keeps a
    second pair, used for sequences longer than `long_after` tokens, as transformers does."""

    cos: torch.Tensor
    sin: torch.Tensor
    long_cos: torch.Tensor | None = None
    long_sin: torch.Tensor | None = None
    long_after: int = 0


def rope_tables(head_dim: int, theta: float, scaling: dict[str, Any] | None, max_len: int) -> RopeTables:
    if (scaling or {}).get("rope_type") != "longrope":
        cos, sin = cos_sin_cache(inverse_frequencies(head_dim, theta, scaling), max_len)
        return RopeTables(cos, sin)
    original = int(scaling["original_max_position_embeddings"])
    factor = scaling.get("factor") or scaling["max_position_embeddings"] / original
    attention_factor = scaling.get("attention_factor") or (
        1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original)))
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    tables = []
    for key in ("short_factor", "long_factor"):
        factors = torch.tensor(scaling[key], dtype=torch.float32)
        if factors.shape != exponents.shape:
            raise ValueError(f"rope {key} has {factors.numel()} entries, expected {exponents.numel()}")
        cos, sin = cos_sin_cache(1.0 / (factors * theta ** exponents), max_len)
        tables += [cos * attention_factor, sin * attention_factor]
    return RopeTables(*tables, long_after=original)


def inverse_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """[head_dim // 2] float32 rotation speeds, with linear or llama3 scaling applied."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rope_type = (scaling or {}).get("rope_type", "default")
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        return _llama3_scaled(inv_freq, scaling)
    if rope_type == "freq_factors":  # GGUF's rope_freqs tensor: one divisor per rotation speed
        factors = torch.tensor(scaling["factors"], dtype=torch.float32)
        if factors.shape != inv_freq.shape:
            raise ValueError(f"rope_freqs has {factors.numel()} factors, expected {inv_freq.numel()}")
        return inv_freq / factors
    return inv_freq


def _llama3_scaled(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def cos_sin_cache(inv_freq: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each [max_len, head_dim] float32, for every position."""
    positions = torch.arange(max_len, dtype=torch.int64).float()
    freqs = torch.outer(positions, inv_freq)  # [max_len, head_dim // 2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [max_len, head_dim]
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [num_tokens, num_heads, head_dim]; cos/sin [num_tokens, head_dim] (already gathered)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]

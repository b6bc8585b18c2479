"""Decode steps through the C decoder (kernels/cpu_decoder.py): whether a model can, and for which steps.

A model qualifies when it runs bfloat16 on the CPU kernels and every layer's four projections are
4-bit layers on the C int4 kernel; a step qualifies when every row decodes one token and there
are no more rows than its 4-bit layers take ("mixed" weights hand bigger steps to the float copy,
engine/model/int4_crossover.py). Everything else runs the layer-by-layer path of engine/model/llama.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from engine.model.int4_linear import Int4Linear
from kernels.cpu_decoder import CpuDecoder, DecoderShape

if TYPE_CHECKING:
    from engine.model.llama import Llama

NO_ROW_LIMIT = 1 << 30


def attach(model: Llama) -> str:
    """Give `model` a C decoder where it qualifies; returns the words for the engine's description
    ("" where it does not)."""
    decoder = build(model)
    if decoder is None:
        return ""
    model.cpu_decoder = decoder
    model.cpu_decoder_max_rows = max_rows(model)
    limit = model.cpu_decoder_max_rows
    return ", C decoder" + ("" if limit >= NO_ROW_LIMIT else f" up to {limit} rows")


def build(model: Llama) -> CpuDecoder | None:
    """The model's C decoder, or None where it does not qualify (see the module's words)."""
    if not model.ops.C_MATMULS or model.embed_tokens.weight.dtype != torch.bfloat16:
        return None
    layers = []
    for layer in model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        projections = (attention.qkv_proj, attention.o_proj, mlp.gate_up_proj, mlp.down_proj)
        if not all(isinstance(p, Int4Linear) and p.c_kernel for p in projections):
            return None
        fields = {"input_norm": layer.input_layernorm.weight, "post_norm": layer.post_attention_layernorm.weight}
        for name, projection in zip(("qkv", "o", "gate_up", "down"), projections):
            fields[f"{name}_codes"], fields[f"{name}_params"] = projection.packed, projection.group_params
            if name in ("qkv", "o"):
                fields[f"{name}_bias"] = projection.bias
            elif projection.bias is not None:
                return None  # decoder.c's MLP has no bias
        layers.append(fields)
    config, attention = model.config, model.layers[0].self_attn
    shape = DecoderShape(config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim,
                         config.intermediate_size, config.sliding_window or 0,
                         model.layers[0].input_layernorm.eps, attention.scale)
    return CpuDecoder(shape, layers)


def max_rows(model: Llama) -> int:
    """The most rows every 4-bit layer multiplies 4-bit (past that, a mixed layer's float copy)."""
    limits = [m.max_int4_rows for m in model.modules() if isinstance(m, Int4Linear) and m.weight is not None]
    return min(limits, default=NO_ROW_LIMIT)


def takes(model: Llama, plan: object, num_tokens: int) -> bool:
    """Whether this step runs through the model's C decoder: pure decode, within its row limit."""
    rows = getattr(plan, "decode_rows", None)
    return (model.cpu_decoder is not None and num_tokens <= model.cpu_decoder_max_rows and rows is not None
            and rows.shape[0] == num_tokens)

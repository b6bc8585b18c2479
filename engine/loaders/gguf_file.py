"""GGUF files: metadata -> ModelConfig and Tokenizer, tensors -> dequantized HF-named weights.

Files are untrusted: every structural problem becomes a ModelLoadError naming the file.
"""

from __future__ import annotations

import functools
import os
import re

import torch

from engine.loaders import gguf_dequant
from engine.loaders.checkpoint import Checkpoint, ModelLoadError, WeightStream
from engine.loaders.gguf_reader import GGUFFile
from engine.loaders.int4_groups import Int4Groups
from engine.loaders.progress import Progress
from engine.model.model_config import ModelConfig
from shared.text.tokenizer import Tokenizer

_LAYER_TENSORS = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_qkv": "self_attn.qkv_proj", "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_FUSED_UP = {"phi3": "mlp.gate_up_proj"}  # llama.cpp stores Phi-3's gate and up rows in ffn_up
_ROPE_FACTORS = ("rope_factors_short.weight", "rope_factors_long.weight")
_ROPE_FREQS = "rope_freqs.weight"  # llama3 rope scaling as per-frequency divisors (Llama 3.1/3.2 files)
_PERMUTED_ROPE = ("llama",)  # llama.cpp interleaves rotary pairs only for these architectures
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


def load_gguf(path: str) -> Checkpoint:
    try:
        gguf_file = GGUFFile(path)
    except ValueError as exc:
        reason = str(exc) if str(exc).startswith(("truncated", "not a GGUF")) else f"corrupt GGUF ({exc})"
        raise ModelLoadError(f"{path}: {reason}") from exc
    meta = gguf_file.metadata
    names = {t.name for t in gguf_file.tensors}
    arch = meta.get("general.architecture")
    try:
        config = ModelConfig.from_gguf_metadata(meta, "output.weight" in names, _rope_factors(gguf_file))
        tokenizer = Tokenizer.from_gguf_metadata(meta)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    _check_tensors(path, gguf_file, arch)
    types = sorted({t.qtype.name for t in gguf_file.tensors})
    size_mib = os.path.getsize(path) / 2**20
    description = (f"{meta.get('general.name', os.path.basename(path))} ({config.architecture}, "
                   f"{config.num_params / 1e6:.0f}M params, GGUF {'+'.join(types)}, {size_mib:.0f} MiB)")
    return Checkpoint(config, lambda: _weights(gguf_file, config, arch), tokenizer, description,
                      int4_weights=_int4_names(gguf_file, arch), quantized_weights=_quantized_names(gguf_file, arch))


def _rope_factors(gguf_file: GGUFFile) -> dict[str, list[float]]:
    """Rope scaling that GGUF stores as tensors: LongRoPE's short/long factors, or rope_freqs."""
    found = {t.name: t for t in gguf_file.tensors if t.name in (*_ROPE_FACTORS, _ROPE_FREQS)}
    if sum(name in found for name in _ROPE_FACTORS) == 1:
        raise ModelLoadError(f"{gguf_file.path}: has one of the two LongRoPE factor tensors")
    return {name.removesuffix(".weight"): gguf_dequant.dequantize(gguf_file.tensor_bytes(t), t.qtype, t.shape)
            .float().tolist() for name, t in found.items()}


def _check_tensors(path: str, gguf_file: GGUFFile, arch: str) -> None:
    for tensor in gguf_file.tensors:
        if tensor.qtype not in gguf_dequant.SUPPORTED_TYPES:
            names = ", ".join(t.name for t in gguf_dequant.SUPPORTED_TYPES)
            raise ModelLoadError(f"{path}: tensor {tensor.name} uses unsupported quantization "
                                 f"{tensor.qtype.name}; supported: {names}")
        if _hf_name(tensor.name, arch) is None:
            raise ModelLoadError(f"{path}: unexpected tensor {tensor.name}")


def _hf_name(gguf_name: str, arch: str) -> str | None:
    """The Hugging Face name of a GGUF tensor; "" for tensors read elsewhere; None if unknown."""
    if gguf_name in _ROPE_FACTORS or gguf_name == _ROPE_FREQS:
        return ""  # part of the rope configuration
    base, _, kind = gguf_name.rpartition(".")
    if base in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[base]}.{kind}"
    match = _LAYER_NAME.match(gguf_name)
    if match and match.group(2) in _LAYER_TENSORS:
        part = _LAYER_TENSORS[match.group(2)]
        if match.group(2) == "ffn_up":
            part = _FUSED_UP.get(arch, part)
        return f"model.layers.{match.group(1)}.{part}.{match.group(3)}"
    return None


def _int4_names(gguf_file: GGUFFile, arch: str) -> frozenset[str]:
    """HF names of the matrices the weight stream hands over as Int4Groups."""
    names = (_hf_name(t.name, arch) for t in gguf_file.tensors if _is_int4_matrix(t.qtype, t.shape))
    return frozenset(name for name in names if name)


def _quantized_names(gguf_file: GGUFFile, arch: str) -> frozenset[str]:
    """HF names of the tensors stored in a block-quantized format (Q8_0 and below)."""
    names = (_hf_name(t.name, arch) for t in gguf_file.tensors if t.qtype in gguf_dequant.BLOCK_TYPES)
    return frozenset(name for name in names if name)


def _is_int4_matrix(qtype: gguf_dequant.QType, shape: tuple[int, ...]) -> bool:
    return qtype in gguf_dequant.INT4_TYPES and len(shape) == 2


def _weights(gguf_file: GGUFFile, config: ModelConfig, arch: str) -> WeightStream:
    """HF-named weights: 4-bit matrices as Int4Groups (the model keeps or dequantizes them),
    everything else dequantized to float."""
    progress = Progress(f"loading {os.path.basename(gguf_file.path)}", len(gguf_file.tensors))
    for tensor in gguf_file.tensors:
        name = _hf_name(tensor.name, arch)
        if name:
            data = gguf_file.tensor_bytes(tensor)
            if _is_int4_matrix(tensor.qtype, tensor.shape):
                weight = gguf_dequant.int4_groups(data, tensor.qtype, tensor.shape)
            else:
                weight = gguf_dequant.dequantize(data, tensor.qtype, tensor.shape)
            num_heads = _permuted_heads(tensor.name, arch, config)
            if num_heads and isinstance(weight, Int4Groups):
                weight = weight.map_rows(functools.partial(_unpermute_rope_rows, num_heads=num_heads))
            elif num_heads:
                weight = _unpermute_rope_rows(weight, num_heads)
            yield name, weight
        progress.advance()
    progress.close()


def _permuted_heads(gguf_name: str, arch: str, config: ModelConfig) -> int | None:
    """The head count of a q/k matrix whose rotary pairs llama.cpp interleaved, else None."""
    if arch in _PERMUTED_ROPE and ".attn_q." in gguf_name:
        return config.num_heads
    if arch in _PERMUTED_ROPE and ".attn_k." in gguf_name:
        return config.num_kv_heads
    return None


def _unpermute_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """llama.cpp interleaves each head's rotary pairs; Hugging Face keeps halves. Undo the former.
    weight [num_heads * head_dim, ...]."""
    head_dim = weight.shape[0] // num_heads
    w = weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:])
    return w.transpose(1, 2).reshape(weight.shape)

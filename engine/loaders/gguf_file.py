"""GGUF files: metadata -> ModelConfig and Tokenizer, tensors -> dequantized HF-named weights.

Files are untrusted: every structural problem becomes a ModelLoadError naming the file.
"""

from __future__ import annotations

import os
import re

import torch

from engine.loaders import gguf_dequant
from engine.loaders.checkpoint import Checkpoint, ModelLoadError, WeightStream
from engine.loaders.gguf_reader import GGUFFile
from engine.loaders.progress import Progress
from engine.model_config import ModelConfig
from engine.tokenizer import Tokenizer

_LAYER_TENSORS = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
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
    try:
        config = ModelConfig.from_gguf_metadata(meta, has_output_tensor="output.weight" in names)
        tokenizer = Tokenizer.from_gguf_metadata(meta)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    _check_tensors(path, gguf_file)
    types = sorted({t.qtype.name for t in gguf_file.tensors})
    size_mib = os.path.getsize(path) / 2**20
    description = (f"{meta.get('general.name', os.path.basename(path))} ({config.architecture}, "
                   f"{config.num_params / 1e6:.0f}M params, GGUF {'+'.join(types)}, {size_mib:.0f} MiB)")
    return Checkpoint(config, lambda: _weights(gguf_file, config), tokenizer, description)


def _check_tensors(path: str, gguf_file: GGUFFile) -> None:
    for tensor in gguf_file.tensors:
        if tensor.qtype not in gguf_dequant.SUPPORTED_TYPES:
            names = ", ".join(t.name for t in gguf_dequant.SUPPORTED_TYPES)
            raise ModelLoadError(f"{path}: tensor {tensor.name} uses unsupported quantization "
                                 f"{tensor.qtype.name}; supported: {names}")
        if _hf_name(tensor.name) is None:
            raise ModelLoadError(f"{path}: unexpected tensor {tensor.name}")


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name == "rope_freqs.weight":
        return ""  # derived from metadata; not loaded
    base, _, kind = gguf_name.rpartition(".")
    if base in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[base]}.{kind}"
    match = _LAYER_NAME.match(gguf_name)
    if match and match.group(2) in _LAYER_TENSORS:
        return f"model.layers.{match.group(1)}.{_LAYER_TENSORS[match.group(2)]}.{match.group(3)}"
    return None


def _weights(gguf_file: GGUFFile, config: ModelConfig) -> WeightStream:
    progress = Progress(f"loading {os.path.basename(gguf_file.path)}", len(gguf_file.tensors))
    for tensor in gguf_file.tensors:
        name = _hf_name(tensor.name)
        if name:
            weight = gguf_dequant.dequantize(gguf_file.tensor_bytes(tensor), tensor.qtype, tensor.shape)
            if ".attn_q." in tensor.name:
                weight = _unpermute_rope_rows(weight, config.num_heads)
            elif ".attn_k." in tensor.name:
                weight = _unpermute_rope_rows(weight, config.num_kv_heads)
            yield name, weight
        progress.advance()
    progress.close()


def _unpermute_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """llama.cpp interleaves each head's rotary pairs; Hugging Face keeps halves. Undo the former.
    weight [num_heads * head_dim, ...]."""
    head_dim = weight.shape[0] // num_heads
    w = weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:])
    return w.transpose(1, 2).reshape(weight.shape)

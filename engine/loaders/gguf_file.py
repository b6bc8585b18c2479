"""GGUF files: metadata -> ModelConfig and Tokenizer, tensors -> dequantized HF-named weights.

Files are untrusted: every structural problem becomes a ModelLoadError naming the file.
"""

from __future__ import annotations

import os
import re

import gguf
import numpy as np
import torch

from engine.loaders import gguf_dequant
from engine.loaders.checkpoint import Checkpoint, ModelLoadError, WeightStream
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
    reader = _open_reader(path)
    try:
        meta = {name: field.contents() for name, field in reader.fields.items()
                if not name.startswith("GGUF.")}
    except Exception as exc:  # malformed field payloads
        raise ModelLoadError(f"{path}: unreadable GGUF metadata ({exc})") from exc
    names = {t.name for t in reader.tensors}
    try:
        config = ModelConfig.from_gguf_metadata(meta, has_output_tensor="output.weight" in names)
        tokenizer = Tokenizer.from_gguf_metadata(meta)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    _check_tensors(path, reader)
    types = sorted({t.tensor_type.name for t in reader.tensors})
    size_mib = os.path.getsize(path) / 2**20
    description = (f"{meta.get('general.name', os.path.basename(path))} ({config.architecture}, "
                   f"{config.num_params / 1e6:.0f}M params, GGUF {'+'.join(types)}, {size_mib:.0f} MiB)")
    return Checkpoint(config, lambda: _weights(path, reader, config), tokenizer, description)


def _open_reader(path: str) -> gguf.GGUFReader:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path}: not a GGUF file (magic {magic!r})")
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises assorted errors on truncated or corrupt files
        raise ModelLoadError(f"{path}: corrupt or truncated GGUF ({type(exc).__name__}: {exc})") from exc


def _check_tensors(path: str, reader: gguf.GGUFReader) -> None:
    file_size = os.path.getsize(path)
    for tensor in reader.tensors:
        if tensor.tensor_type not in gguf_dequant.SUPPORTED_TYPES:
            names = ", ".join(t.name for t in gguf_dequant.SUPPORTED_TYPES)
            raise ModelLoadError(f"{path}: tensor {tensor.name} uses unsupported quantization "
                                 f"{tensor.tensor_type.name}; supported: {names}")
        if tensor.data_offset + tensor.n_bytes > file_size:
            raise ModelLoadError(f"{path}: truncated: tensor {tensor.name} ends past the end of the file")
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


def _weights(path: str, reader: gguf.GGUFReader, config: ModelConfig) -> WeightStream:
    progress = Progress(f"loading {os.path.basename(path)}", len(reader.tensors))
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        if name:
            shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists the innermost dim first
            weight = gguf_dequant.dequantize(np.asarray(tensor.data), tensor.tensor_type, shape)
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

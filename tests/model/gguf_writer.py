"""Write a tiny Hugging Face model as GGUF, the way llama.cpp's converter lays it out."""

from __future__ import annotations

import gguf
import numpy as np
import torch

from shared.text.gguf_vocab import byte_alphabet

_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output",
          "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def _permute(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """llama.cpp's interleaving of rotary pairs (applied to llama-architecture q/k only)."""
    return weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:]) \
        .swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model: torch.nn.Module, path, arch: str, quantization: gguf.GGMLQuantizationType | None = None) -> None:
    """`quantization`: store every matrix whose rows split into whole blocks in that format
    (the rest, and everything by default, as float32)."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in (("context_length", config.max_position_embeddings), ("embedding_length", config.hidden_size),
                       ("block_count", config.num_hidden_layers), ("feed_forward_length", config.intermediate_size),
                       ("attention.head_count", config.num_attention_heads),
                       ("attention.head_count_kv", config.num_key_value_heads)):
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.rope.freq_base", float(config.rope_parameters["rope_theta"]))
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", config.rms_norm_eps)
    tokens = list(byte_alphabet().values())[:config.vocab_size - 1] + ["Ġt"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(["Ġ t"])
    writer.add_token_types([1] * len(tokens))
    writer.add_eos_token_id(config.vocab_size - 2)
    rope = config.rope_parameters
    if rope.get("rope_type") == "llama3":  # llama.cpp stores it as per-frequency divisors
        from engine.model.rope import inverse_frequencies

        head_dim = config.hidden_size // config.num_attention_heads
        plain = inverse_frequencies(head_dim, rope["rope_theta"], None)
        writer.add_tensor("rope_freqs.weight", (plain / inverse_frequencies(head_dim, rope["rope_theta"], rope))
                          .numpy())
    if arch == "phi3":
        writer.add_uint32(f"{arch}.rope.scaling.original_context_length", rope["original_max_position_embeddings"])
        writer.add_uint32(f"{arch}.attention.sliding_window", config.sliding_window or 0)
        writer.add_tensor("rope_factors_long.weight", np.asarray(rope["long_factor"], np.float32))
        writer.add_tensor("rope_factors_short.weight", np.asarray(rope["short_factor"], np.float32))
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        base, _, kind = name.rpartition(".")
        if base in _GLOBAL:
            gguf_name = f"{_GLOBAL[base]}.{kind}"
        else:
            _, _, layer, part = base.split(".", 3)
            gguf_name = f"blk.{layer}.{_LAYER[part]}.{kind}"
        if arch == "llama" and ".attn_q." in gguf_name:
            tensor = _permute(tensor, config.num_attention_heads)
        elif arch == "llama" and ".attn_k." in gguf_name:
            tensor = _permute(tensor, config.num_key_value_heads)
        _add_tensor(writer, gguf_name, tensor.float().numpy(), quantization)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_tensor(writer: gguf.GGUFWriter, name: str, values: np.ndarray,
                quantization: gguf.GGMLQuantizationType | None) -> None:
    if quantization is None or values.ndim != 2 or values.shape[1] % gguf.GGML_QUANT_SIZES[quantization][0]:
        writer.add_tensor(name, values)
    else:
        writer.add_tensor(name, gguf.quants.quantize(values, quantization), raw_dtype=quantization)

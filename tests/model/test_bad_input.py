"""Bad input gets a clear exception naming the problem; nothing crashes, hangs or half-builds."""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest

from engine import InferenceEngine, SamplingParams
from engine.loaders import ModelLoadError, open_checkpoint


def test_missing_path():
    with pytest.raises(ModelLoadError, match="no such file"):
        InferenceEngine.from_pretrained("/does/not/exist")


def test_unsupported_architecture_lists_the_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "vocab_size": 10}))
    with pytest.raises(ModelLoadError, match="unsupported architecture 'GPT2LMHeadModel'.*LlamaForCausalLM"):
        open_checkpoint(str(tmp_path))


def test_truncated_gguf(gguf_path, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    with open(gguf_path, "rb") as src:
        truncated.write_bytes(src.read(40_000_000))
    with pytest.raises(ModelLoadError, match="truncated"):
        open_checkpoint(str(truncated))


def test_truncated_gguf_header(gguf_path, tmp_path):
    truncated = tmp_path / "header.gguf"
    with open(gguf_path, "rb") as src:
        truncated.write_bytes(src.read(100_000))  # cut inside the vocabulary metadata
    with pytest.raises(ModelLoadError, match="truncated: needs 8 bytes at offset"):
        open_checkpoint(str(truncated))


def test_not_a_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        open_checkpoint(str(fake))


def test_corrupt_gguf_metadata(tmp_path):
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="corrupt GGUF.*implausible counts"):
        open_checkpoint(str(corrupt))


def test_gguf_with_an_absurd_string_length(gguf_path, tmp_path):
    with open(gguf_path, "rb") as f:
        data = bytearray(f.read(4096))
    data[24:32] = (2**62).to_bytes(8, "little")  # the first metadata key's length
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="truncated: needs 4611686018427387904 bytes"):
        open_checkpoint(str(bad))


def _write_tiny_gguf(path, tensor_type: gguf.GGMLQuantizationType, payload: np.ndarray) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in (("block_count", 1), ("context_length", 64), ("embedding_length", 256),
                       ("feed_forward_length", 64), ("attention.head_count", 4)):
        writer.add_uint32(f"llama.{key}", value)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_merges(["a b"])
    writer.add_token_types([1, 1, 1])
    writer.add_tensor("token_embd.weight", payload, raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_quantization_type(tmp_path):
    path = tmp_path / "iq2.gguf"
    _write_tiny_gguf(path, gguf.GGMLQuantizationType.IQ2_XXS, np.zeros((3, 66), dtype=np.uint8))  # 3 x 256 values
    with pytest.raises(ModelLoadError, match="unsupported quantization IQ2_XXS.*Q4_1.*Q6_K"):
        open_checkpoint(str(path))


def _hf_dir_with_weights(tmp_path, weights: bytes):
    config = {"architectures": ["LlamaForCausalLM"], "vocab_size": 16, "hidden_size": 8,
              "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "max_position_embeddings": 32}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(weights)
    return str(tmp_path)


def test_corrupt_safetensors(tmp_path):
    with pytest.raises(ModelLoadError, match="corrupt or truncated safetensors"):
        open_checkpoint(_hf_dir_with_weights(tmp_path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!}xx"))


def test_truncated_safetensors(tmp_path):
    import torch
    from safetensors.torch import save

    blob = save({"model.embed_tokens.weight": torch.zeros(16, 8)})
    with pytest.raises(ModelLoadError, match="corrupt or truncated safetensors"):
        open_checkpoint(_hf_dir_with_weights(tmp_path, blob[:-100]))


def test_checkpoint_missing_tensors_is_refused(tmp_path):
    import torch
    from safetensors.torch import save

    path = _hf_dir_with_weights(tmp_path, save({"model.embed_tokens.weight": torch.zeros(16, 8)}))
    with pytest.raises(ValueError, match="checkpoint lacks"):
        InferenceEngine.from_pretrained(path, dtype="float32")


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.5), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -2), ("min_p", 2.0),
    ("max_tokens", 0), ("repetition_penalty", 0.0), ("presence_penalty", 3.0), ("frequency_penalty", -3.0),
    ("logprobs", 21), ("min_tokens", 100), ("seed", 2**70), ("stop_token_ids", [-1]),
])
def test_out_of_range_sampling_parameter_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"SamplingParams.{field} "):
        SamplingParams(**{field: value})


def test_unknown_engine_option():
    with pytest.raises(TypeError, match="max_num_sequences"):
        InferenceEngine.from_pretrained(None, max_num_sequences=4)


def test_bad_prompts_leave_the_engine_usable(smollm2):
    limit = smollm2.max_model_len
    with pytest.raises(ValueError, match=f"context is {limit}"):
        smollm2.generate([1] * (limit + 5), SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="prompt is empty"):
        smollm2.generate([[]], SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        smollm2.generate([10**9], SamplingParams(max_tokens=1))
    with pytest.raises(TypeError, match="a prompt is a str or a list of token ids"):
        smollm2.generate([3.5], SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        smollm2.generate(["fine", [10**9]], SamplingParams(max_tokens=1))  # all or nothing
    smollm2.generate("flush", SamplingParams(max_tokens=1))
    assert not smollm2.core.scheduler.requests
    assert smollm2.generate("Hi", SamplingParams(max_tokens=2, temperature=0.0)).finish_reason == "length"


def test_copied_model_file_still_loads(gguf_path, tmp_path):
    copy = tmp_path / "copy.gguf"
    shutil.copy(gguf_path, copy)
    assert open_checkpoint(str(copy)).config.num_layers == 30


def test_a_gguf_tokenizer_the_tokenizers_library_refuses_is_a_load_error(tmp_path):
    path = tmp_path / "bad_merges.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in (("block_count", 1), ("context_length", 64), ("embedding_length", 32),
                       ("feed_forward_length", 64), ("attention.head_count", 4)):
        writer.add_uint32(f"llama.{key}", value)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "\x00", "ab"])  # the merge below names "b", which is not a token
    writer.add_token_merges(["a b"])
    writer.add_token_types([1, 1, 1])
    writer.add_tensor("token_embd.weight", np.ones((3, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="tokenizer in the GGUF metadata is invalid"):
        open_checkpoint(str(path))

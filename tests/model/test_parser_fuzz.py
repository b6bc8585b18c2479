"""Untrusted model files, mutated at random: the GGUF and safetensors parsers either load them or
raise ModelLoadError (or ValueError) naming the problem: never another exception, a hang or an
allocation sized by the file."""

from __future__ import annotations

import json
import struct

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.loaders import open_checkpoint

EXAMPLES = 100  # per parser, in `make test`; more with --hypothesis-seed / a larger setting by hand


def _outcome(path) -> str:
    """Everything a start-up reads from the file (header, metadata, tokenizer, every tensor):
    "loaded", or the refusal's message. Any exception but ValueError (ModelLoadError is one)
    propagates and fails the test."""
    try:
        checkpoint = open_checkpoint(str(path))
        for name, tensor in checkpoint.open_weights():
            assert isinstance(name, str) and tensor.numel() >= 0
        return "loaded"
    except ValueError as exc:
        return str(exc)


def _assert_loaded_or_refused_by_name(outcome: str) -> None:
    assert outcome == "loaded" or len(outcome) > 10, f"a refusal that names nothing: {outcome!r}"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in (("block_count", 1), ("context_length", 64), ("embedding_length", 32),
                       ("feed_forward_length", 64), ("attention.head_count", 4)):
        writer.add_uint32(f"llama.{key}", value)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_merges(["a b"])
    writer.add_token_types([1, 1, 1])
    writer.add_tensor("token_embd.weight", np.ones((3, 32), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _safetensors(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


mutations = st.lists(st.tuples(st.integers(0, 2**16), st.binary(min_size=1, max_size=8)), min_size=1, max_size=6)
fuzz = settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fuzz
@given(mutations, st.one_of(st.none(), st.integers(0, 2**16)))
def test_mutated_gguf_loads_or_is_refused_by_name(tiny_gguf, tmp_path, changes, cut):
    data = bytearray(tiny_gguf)
    for position, patch in changes:
        at = position % len(data)
        data[at:at + len(patch)] = patch
    path = tmp_path / "mutated.gguf"
    path.write_bytes(bytes(data[:cut]) if cut is not None else bytes(data))
    _assert_loaded_or_refused_by_name(_outcome(path))


lying = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "F64", "XX", ""]),
    "shape": st.lists(st.integers(-3, 2**40), max_size=4),
    "data_offsets": st.lists(st.integers(-(2**63), 2**63), min_size=0, max_size=3),
})


@fuzz
@given(st.dictionaries(st.sampled_from(["model.norm.weight", "model.embed_tokens.weight", "__metadata__", "x"]),
                       lying, max_size=3), st.integers(0, 64), st.one_of(st.none(), st.integers(0, 2**63)))
def test_safetensors_with_lying_headers_are_refused_by_name(tmp_path, tensors, payload_size, header_length):
    directory = tmp_path / "model"
    directory.mkdir(exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "vocab_size": 3, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-5,
              "max_position_embeddings": 64}
    (directory / "config.json").write_text(json.dumps(config))
    data = _safetensors(tensors, b"\0" * payload_size)
    if header_length is not None:  # a length field that lies about the JSON that follows
        data = struct.pack("<Q", header_length) + data[8:]
    (directory / "model.safetensors").write_bytes(data)
    outcome = _outcome(directory)
    _assert_loaded_or_refused_by_name(outcome)
    if header_length is not None and header_length != len(data) - 8 - payload_size:
        assert outcome != "loaded", "a header length that lies was taken"

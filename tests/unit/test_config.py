"""EngineConfig and SamplingParams validate at construction and never change afterwards."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from shared.config import EngineConfig
from shared.sampling import FinishReason, SamplingParams, TokenLogprob


@pytest.mark.parametrize("field,value", [("device", "tpu"), ("dtype", "int8"), ("kernels", "x"),
                                         ("block_size", 0), ("max_num_seqs", -1), ("num_kv_blocks", 0),
                                         ("kv_cache_gib", 0.0), ("max_model_len", 0)])
def test_engine_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        EngineConfig(**{field: value})


def test_engine_config_is_frozen():
    config = EngineConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.block_size = 32
    assert config.replace(block_size=32).block_size == 32 and config.block_size == 16


def test_sampling_params_round_trip_on_the_wire_and_validate_there():
    params = SamplingParams(max_tokens=7, temperature=0.5, seed=-3, stop_token_ids=[4, 5], logprobs=2)
    encoded = msgspec.msgpack.encode(params)
    assert msgspec.msgpack.decode(encoded, type=SamplingParams) == params
    bad = encoded[:-1]  # a truncated payload
    with pytest.raises(msgspec.DecodeError):
        msgspec.msgpack.decode(bad, type=SamplingParams)
    forged = msgspec.msgpack.encode(["SamplingParams", 5, -1.0])  # temperature -1 from a peer
    with pytest.raises(msgspec.ValidationError, match="temperature"):
        msgspec.msgpack.decode(forged, type=SamplingParams)


def test_logprob_and_finish_reason_wire_forms():
    entry = TokenLogprob(3, -0.5, [3, 9], [-0.5, -1.5])
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(entry), type=TokenLogprob) == entry
    assert [r.openai_name for r in FinishReason] == [None, "stop", "length", "abort", "error", "timeout"]


def test_a_device_the_machine_lacks_is_one_clear_error():
    import torch

    from engine.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="Forge runs on cpu or cuda"):
        resolve_device("meta")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: .*use --device cpu"):
            resolve_device("cuda")

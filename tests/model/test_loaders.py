"""Loader paths and refusals: HF cache layouts, PyTorch .bin safety, unsupported features."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from engine import InferenceEngine
from engine.loaders import ModelLoadError, open_checkpoint
from tests.model.test_llama_vs_hf import VARIANTS, _save_tiny_model


def _hf_cache_entry(root, snapshots: list[str], main: str | None):
    entry = root / "models--org--tiny"
    for name in snapshots:
        _save_tiny_model(entry / "snapshots" / name, *VARIANTS["llama-tied"])
    if main is not None:
        (entry / "refs").mkdir(parents=True)
        (entry / "refs" / "main").write_text(main + "\n")
    return entry


def test_hf_cache_layout_resolves_to_the_main_snapshot(tmp_path):
    entry = _hf_cache_entry(tmp_path, ["aaa111", "bbb222"], main="bbb222")
    engine = InferenceEngine.from_pretrained(str(entry), dtype="float32")
    assert engine.description.startswith("bbb222")
    only = _hf_cache_entry(tmp_path / "single", ["ccc333"], main=None)
    assert open_checkpoint(str(only)).config.num_layers == 2


def test_hf_cache_layout_without_a_choice_is_refused(tmp_path):
    entry = _hf_cache_entry(tmp_path, ["aaa111", "bbb222"], main=None)
    with pytest.raises(ModelLoadError, match="2 snapshots and no refs/main"):
        open_checkpoint(str(entry))


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pytorch_bin_with_pickled_code_is_refused(tmp_path):
    _save_tiny_model(tmp_path, *VARIANTS["phi3-longrope-bin"])
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": _Payload()}, f)
    with pytest.raises(ModelLoadError, match="cannot load PyTorch checkpoint"):
        InferenceEngine.from_pretrained(str(tmp_path), dtype="float32")


@pytest.mark.parametrize("feature,value,message", [
    ("use_sliding_window", True, "use_sliding_window"),
    ("partial_rotary_factor", 0.5, "partial_rotary_factor"),
    ("mlp_bias", True, "mlp_bias"),
])
def test_unsupported_config_features_are_named(tmp_path, feature, value, message):
    _save_tiny_model(tmp_path, *VARIANTS["qwen2-biases"])
    config = json.loads((tmp_path / "config.json").read_text())
    config[feature] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        open_checkpoint(str(tmp_path))


def test_sharded_safetensors_with_an_index(tmp_path):
    model = _save_tiny_model(tmp_path / "whole", *VARIANTS["llama-untied"])
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    engine = InferenceEngine.from_pretrained(str(tmp_path / "sharded"), dtype="float32")
    reference = InferenceEngine.from_pretrained(str(tmp_path / "whole"), dtype="float32")
    assert torch.equal(engine.core.runner.model.lm_head.weight, reference.core.runner.model.lm_head.weight)

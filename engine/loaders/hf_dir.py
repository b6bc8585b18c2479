"""Hugging Face model directories: config.json, *.safetensors (one file or sharded with an
index), tokenizer.json and tokenizer_config.json / chat_template.jinja."""

from __future__ import annotations

import json
import os

from safetensors import SafetensorError, safe_open

from engine.loaders.checkpoint import Checkpoint, ModelLoadError, WeightStream
from engine.loaders.progress import Progress
from engine.model_config import ModelConfig
from engine.tokenizer import Tokenizer

_INDEX = "model.safetensors.index.json"


def load_hf_dir(path: str) -> Checkpoint:
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ModelLoadError(f"{path}: no config.json (expected a Hugging Face model directory)")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = ModelConfig.from_hf_json(json.load(f))
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"{config_path}: {exc}") from exc
    files = _safetensors_files(path)
    for file in files:
        _check_header(file)
    tokenizer = Tokenizer.from_hf_dir(path) if os.path.isfile(os.path.join(path, "tokenizer.json")) else None
    size_mib = sum(os.path.getsize(f) for f in files) / 2**20
    description = (f"{os.path.basename(os.path.normpath(path))} ({config.architecture}, "
                   f"{config.num_params / 1e6:.0f}M params, safetensors, {size_mib:.0f} MiB)")
    return Checkpoint(config, lambda: _weights(files), tokenizer, description)


def _safetensors_files(path: str) -> list[str]:
    index_path = os.path.join(path, _INDEX)
    if os.path.isfile(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                shard_names = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{index_path}: malformed index ({exc})") from exc
        files = [os.path.join(path, name) for name in shard_names]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise ModelLoadError(f"{path}: the index names missing shards: {missing[:3]}")
        return files
    files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".safetensors"))
    if not files:
        raise ModelLoadError(f"{path}: no *.safetensors weights found")
    return files


def _check_header(file: str) -> None:
    """Parse the header and check each tensor's byte range lies inside the file."""
    try:
        with safe_open(file, framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{file}: corrupt or truncated safetensors file ({exc})") from exc


def _weights(files: list[str]) -> WeightStream:
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:  # memory-mapped: one tensor resident at a time
                names = list(f.keys())
                progress = Progress(f"loading {os.path.basename(file)}", len(names))
                for name in names:
                    yield name, f.get_tensor(name)
                    progress.advance()
                progress.close()
        except SafetensorError as exc:
            raise ModelLoadError(f"{file}: {exc}") from exc

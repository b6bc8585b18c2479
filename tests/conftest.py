"""Shared fixtures: the embedded default model, loaded once per session by Forge and by the
transformers oracle."""

from __future__ import annotations

import contextlib
import functools
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
def smollm2_int4_bf16(gguf_path: str):
    """The embedded GGUF in bfloat16 with every 4-bit layer kept 4-bit (no float copy): shared by
    the 4-bit weight tests and the C decoder's."""
    from engine import InferenceEngine

    return InferenceEngine.from_pretrained(gguf_path, dtype="bfloat16", quantized_weights="int4")


@pytest.fixture(scope="session")
def hf_smollm2(gguf_path: str):
    """(model, tokenizer) from transformers loading the very same GGUF, float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.split(gguf_path)
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    return model.eval(), tokenizer


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers parses the GGUF afresh for the tokenizer, the config and the weights (about 6 s
    of Python each over 49k vocabulary strings) and rebuilds the same tensor-name map for every
    tensor (7 s): while it loads, one parse of the file and one map per (arch, layers). Both are
    only read, so what transformers builds is unchanged; it is half the oracle's load time. The one
    parse reads the file into memory instead of mapping it: the same bytes, but numpy's memmap
    costs microseconds per slice, and the parse takes 200,000 slices (5.4 s mapped, ~1 s in memory)."""
    import gguf
    import numpy as np

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def read_whole(path, mode: str = "r"):
        with _file_in_memory(np):
            return reader(path, mode)

    gguf.GGUFReader = functools.cache(read_whole)
    gguf.get_tensor_name_map = functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


@contextlib.contextmanager
def _file_in_memory(np):
    """np.memmap(path, mode="r") gives the file's bytes as a plain array while this lasts."""
    memmap = np.memmap

    def whole_file(path, dtype=np.uint8, mode="r+", *args, **kwargs):
        if mode != "r" or args or kwargs:
            return memmap(path, dtype, mode, *args, **kwargs)
        return np.fromfile(path, dtype=dtype)

    np.memmap = whole_file
    try:
        yield
    finally:
        np.memmap = memmap


@pytest.fixture(scope="session")
def smollm2_prompts(smollm2) -> list[list[int]]:
    """The golden prompts as token ids: chat turns, plain text, and one long text that spans
    several prefill chunks."""
    from tests.model.prompts import CHAT, PLAIN, long_text

    chat = [smollm2.apply_chat_template(m, tokenize=True) for m in CHAT]
    return chat + [smollm2.tokenizer.encode(p) for p in PLAIN + [long_text()]]


HF_GREEDY_TOKENS = 24  # what its users compare


@pytest.fixture(scope="session")
def hf_greedy_runs(hf_smollm2, smollm2_prompts) -> list[tuple[list[int], list[int], list[float], list]]:
    """(prompt, tokens, top-2 margins, log-softmax per step) of transformers' float32 greedy
    continuation of each golden prompt, HF_GREEDY_TOKENS long: computed once, the slowest oracle."""
    from tests.model.hf_oracle import hf_greedy

    hf_model, _ = hf_smollm2
    runs = []
    for prompt in smollm2_prompts:
        step_logprobs: list = []
        tokens, margins = hf_greedy(hf_model, prompt, HF_GREEDY_TOKENS, step_logprobs)
        runs.append((prompt, tokens, margins, step_logprobs))
    return runs

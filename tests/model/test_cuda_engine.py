"""The whole engine on kernels.cuda gives the tokens kernels.ref gives: a random tiny Llama, chunked
prefill mixed with decode, greedy and seeded sampling; on a GPU also with and without decode CUDA
graphs. Without a GPU the CUDA kernels run under the CPU emulator (tests/kernels/emulator)."""

from __future__ import annotations

import pytest
import torch

import kernels
from engine import InferenceEngine
from engine.loaders.random_weights import random_checkpoint
from engine.model_config import ModelConfig
from kernels import cuda
from shared.config import EngineConfig
from shared.messages import SamplingParams
from tests.kernels.emulator import EmulatedLauncher

TINY = ModelConfig(architecture="LlamaForCausalLM", vocab_size=512, hidden_size=192, intermediate_size=384,
                   num_layers=2, num_heads=6, num_kv_heads=2, head_dim=64, rms_norm_eps=1e-5,
                   rope_theta=10000.0, max_position_embeddings=1024, tie_word_embeddings=False)
PROMPTS = [[(7 * i + 3 * j) % 500 + 1 for j in range(n)] for i, n in enumerate((5, 40, 17, 70))]
# a small token budget: prompt chunks share steps with other requests' decodes
OPTIONS = dict(dtype="float32", num_kv_blocks=64, max_num_batched_tokens=48, max_num_seqs=8)


def engine(device: str, **options) -> InferenceEngine:
    return InferenceEngine.from_checkpoint(random_checkpoint(TINY, seed=3),
                                           EngineConfig(device=device, **OPTIONS, **options))


def tokens(eng: InferenceEngine, params: SamplingParams) -> list[list[int]]:
    return [c.token_ids for c in eng.generate(PROMPTS, params)]


GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
SEEDED = SamplingParams(max_tokens=8, temperature=0.9, top_p=0.9, top_k=40, seed=11, ignore_eos=True)


@pytest.fixture(scope="module")
def reference_tokens() -> dict[str, list[list[int]]]:
    eng = engine("cpu", kernels="ref")
    greedy, seeded = tokens(eng, GREEDY), tokens(eng, SEEDED)
    assert seeded != [t[:8] for t in greedy]  # the seeded run really samples
    return {"greedy": greedy, "seeded": seeded}


def test_emulated_cuda_kernels_give_the_reference_tokens(reference_tokens, monkeypatch):
    previous = cuda.use_launcher(EmulatedLauncher())
    try:
        monkeypatch.setattr(kernels, "load", lambda kind, device: cuda)  # the CUDA ops, on CPU tensors
        eng = engine("cpu", cuda_graphs=False)
        assert eng.core.runner.model.ops is cuda
        assert tokens(eng, GREEDY) == reference_tokens["greedy"]
        assert tokens(eng, SEEDED) == reference_tokens["seeded"]  # same thresholds, same noise
    finally:
        cuda.use_launcher(previous)


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_gpu_engine_gives_the_reference_tokens(reference_tokens, cuda_graphs):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    eng = engine("cuda", kernels="cuda", cuda_graphs=cuda_graphs)
    assert (eng.core.runner.graphs is not None) == cuda_graphs
    assert tokens(eng, GREEDY) == reference_tokens["greedy"]
    assert tokens(eng, SEEDED) == reference_tokens["seeded"]

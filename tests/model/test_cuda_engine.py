"""The whole engine on kernels.cuda gives the tokens kernels.ref gives: a random tiny Llama, chunked
prefill mixed with decode, greedy and seeded sampling; on a GPU (against kernels=ref on the same
GPU) with and without decode CUDA graphs. Without a GPU the CUDA kernels run under the CPU
emulator (tests/kernels/emulator), and the graph runner's steps are replayed eagerly."""

from __future__ import annotations

import pytest
import torch

import kernels
from engine import InferenceEngine
from engine.loaders.random_weights import random_checkpoint
from engine.model.model_config import ModelConfig
from kernels import cuda
from shared.config import EngineConfig, SpeculativeConfig
from shared.sampling import SamplingParams
from tests.kernels.emulator import EmulatedLauncher

TINY = ModelConfig(architecture="LlamaForCausalLM", vocab_size=512, hidden_size=192, intermediate_size=384,
                   num_layers=2, num_heads=6, num_kv_heads=2, head_dim=64, rms_norm_eps=1e-5,
                   rope_theta=10000.0, max_position_embeddings=1024, tie_word_embeddings=False)
PROMPTS = [[(7 * i + 3 * j) % 500 + 1 for j in range(n)] for i, n in enumerate((5, 40, 17, 70, 9))]
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


@pytest.fixture
def emulated_cuda_engine(monkeypatch) -> InferenceEngine:
    """The engine on kernels.cuda with CPU tensors, the kernels run by the emulator."""
    previous = cuda.use_launcher(EmulatedLauncher())
    monkeypatch.setattr(kernels, "load", lambda *args: cuda)
    eng = engine("cpu", cuda_graphs=False)
    assert eng.core.runner.model.ops is cuda
    yield eng
    cuda.use_launcher(previous)


def test_emulated_cuda_kernels_give_the_reference_tokens(reference_tokens, emulated_cuda_engine):
    assert tokens(emulated_cuda_engine, GREEDY) == reference_tokens["greedy"]
    assert tokens(emulated_cuda_engine, SEEDED) == reference_tokens["seeded"]  # same thresholds, same noise


def test_decode_graph_buckets_give_the_reference_tokens(reference_tokens, emulated_cuda_engine):
    """The decode-graph runner (buckets, padding rows, static buffers, plans built once over them)
    with each step replayed eagerly instead of from a recorded CUDA graph."""
    runner = emulated_cuda_engine.core.runner

    def replayed_batch_sizes(max_seq_len: int, seeded: bool) -> list[int]:
        runner.capture_graphs(max_batch=8, max_seq_len=max_seq_len, capture=lambda step: step)
        sizes, run = [], runner.graphs.run
        runner.graphs.run = lambda *args: (sizes.append(args[3].shape[0]), run(*args))[1]
        assert tokens(emulated_cuda_engine, GREEDY) == reference_tokens["greedy"]
        if seeded:
            assert tokens(emulated_cuda_engine, SEEDED) == reference_tokens["seeded"]
        return sizes

    sizes = replayed_batch_sizes(max_seq_len=128, seeded=True)
    assert runner.graphs.buckets == [1, 2, 4, 8]
    assert any(size not in runner.graphs.buckets for size in sizes)  # replays with padding rows
    # the 70-token prompt outgrows 64 tokens of context: its later steps run eagerly
    assert len(replayed_batch_sizes(max_seq_len=64, seeded=False)) < len(sizes)


def test_emulated_cuda_kernels_verify_drafts_as_the_reference_decodes(reference_tokens, monkeypatch):
    """Speculative decoding on the CUDA kernels (eager: draft tokens are extra query rows the
    paged attention kernel scores causally, beside prompt chunks and decodes): the reference's
    greedy and seeded tokens."""
    previous = cuda.use_launcher(EmulatedLauncher())
    monkeypatch.setattr(kernels, "load", lambda *args: cuda)
    try:
        eng = engine("cpu", cuda_graphs=False, speculative=SpeculativeConfig(prompt_lookup_min=1,
                                                                             disable_by_batch_size=8))
        assert tokens(eng, GREEDY) == reference_tokens["greedy"]
        assert tokens(eng, SEEDED) == reference_tokens["seeded"]
        assert eng.core.scheduler.drafter.num_accepted_tokens > 0
    finally:
        cuda.use_launcher(previous)


@pytest.fixture(scope="module")
def gpu_reference_tokens() -> dict[str, list[list[int]]]:
    """kernels=ref on the GPU: the same cuBLAS matmuls as the CUDA-kernel engine, so only the
    kernels differ."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    eng = engine("cuda", kernels="ref")
    assert eng.core.runner.graphs is None  # the reference plan cannot be replayed
    return {"greedy": tokens(eng, GREEDY), "seeded": tokens(eng, SEEDED)}


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_gpu_engine_gives_the_reference_tokens(gpu_reference_tokens, cuda_graphs):
    eng = engine("cuda", kernels="cuda", cuda_graphs=cuda_graphs)
    assert eng.core.runner.model.ops is cuda
    assert (eng.core.runner.graphs is not None) == cuda_graphs
    assert tokens(eng, GREEDY) == gpu_reference_tokens["greedy"]
    assert tokens(eng, SEEDED) == gpu_reference_tokens["seeded"]


def test_decode_graph_padding_rows_write_no_kv(emulated_cuda_engine):
    """After a batch of 4, a batch of 3 runs in the same bucket: the padding row, whose inputs
    are the previous step's, must not write the KV cache again."""
    runner = emulated_cuda_engine.core.runner
    runner.capture_graphs(max_batch=4, max_seq_len=64, capture=lambda step: step)

    def decode(num_seqs: int, position: int) -> None:
        rows = torch.arange(num_seqs)
        positions = torch.full((num_seqs,), position)
        with torch.inference_mode():  # sequence i owns block i + 1
            runner.graphs.run(rows + 7, positions, (rows + 1) * 16 + position, (rows + 1)[:, None].int(),
                              (positions + 1).int())

    decode(4, position=5)
    before = runner.kv_cache.clone()  # [layers, 2, blocks, block_size, kv heads, head_dim]
    decode(3, position=6)
    changed = (runner.kv_cache != before).any(dim=-1).any(dim=-1)  # [layers, 2, blocks, block_size]
    assert {tuple(slot) for slot in changed.nonzero()[:, 2:].tolist()} == {(1, 6), (2, 6), (3, 6)}

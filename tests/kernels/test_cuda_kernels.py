"""kernels.cuda against kernels.ref: on a GPU (`pytest -m gpu`) and, everywhere, with the very same
CUDA sources run by the CPU emulator (tests/kernels/emulator), which checks the kernels' logic:
indexing, masking, partition merging, radix selection, and barrier placement."""

from __future__ import annotations

import pytest
import torch

from kernels import cuda, ref
from tests.kernels.emulator import EmulatedLauncher
from tests.kernels.paged_inputs import dense_attention, make_paged_inputs

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
       torch.float16: dict(atol=3e-3, rtol=3e-3)}


@pytest.fixture(params=["emulated", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request, monkeypatch) -> torch.device:
    """Where cuda's kernels run: the CPU emulator, or the GPU through CuPy."""
    if request.param == "gpu":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA GPU")
        previous = cuda.use_launcher(None)
        yield torch.device("cuda")
    else:
        previous = cuda.use_launcher(EmulatedLauncher())
        monkeypatch.setattr(cuda, "MIN_PARTITION", 32)  # small contexts still split into partitions
        yield torch.device("cpu")
    cuda.use_launcher(previous)


def on(device, *tensors):
    return [t.to(device) for t in tensors]


ATTENTION_CASES = {  # (seq_lens, q_lens)
    "decode-one": ([1], [1]),
    "decode-block-edges": ([15, 16, 17, 32, 33], [1, 1, 1, 1, 1]),
    "decode-ragged": ([300, 1, 64], [1, 1, 1]),
    "prefill-fresh": ([33], [33]),
    "prefill-chunk-after-cache": ([50], [18]),
    "mixed": ([40, 7, 129, 16], [1, 7, 32, 1]),
}


def assert_attention_matches_dense(device, seq_lens, q_lens, num_q_heads, num_kv_heads, head_dim, block_size, dtype,
                    window=None, max_seq_len=None):
    query, k_cache, v_cache, tables, lens, starts, dense_k, dense_v = make_paged_inputs(
        seq_lens, q_lens, num_q_heads, num_kv_heads, head_dim, block_size, dtype)
    query, k_cache, v_cache, tables, lens, starts = on(device, query, k_cache, v_cache, tables, lens, starts)
    plan = cuda.plan_attention(tables, lens, starts, window, max_seq_len)
    got = cuda.paged_attention(query, k_cache, v_cache, plan, scale=head_dim ** -0.5)
    expected = dense_attention(query.cpu(), dense_k, dense_v, seq_lens, q_lens, head_dim ** -0.5, window)
    assert got.shape == query.shape and got.dtype == dtype
    torch.testing.assert_close(got.cpu().double(), expected, **TOL[dtype])
    return plan


@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_paged_attention_nine_query_heads_over_three(device, case, dtype):
    seq_lens, q_lens = ATTENTION_CASES[case]
    assert_attention_matches_dense(device, seq_lens, q_lens, 9, 3, 64, 16, dtype)


@pytest.mark.parametrize("head_dim,block_size", [(96, 8), (128, 32), (128, 16)])
def test_paged_attention_other_head_dims_and_pages(device, head_dim, block_size):
    assert_attention_matches_dense(device, [40, 7, 129, 16], [1, 7, 32, 1], 8, 2, head_dim, block_size, torch.bfloat16)


@pytest.mark.parametrize("window", [1, 5, 16, 40])
def test_paged_attention_sliding_window(device, window):
    assert_attention_matches_dense(device, [40, 7, 129, 16], [1, 7, 32, 1], 4, 2, 64, 16, torch.float32, window)


def test_paged_attention_group_larger_than_a_block_of_rows(device):
    """32 query heads over 1 kv head: a prefill tile's 8 tokens x 32 heads take several row chunks."""
    assert_attention_matches_dense(device, [70, 20], [9, 20], 32, 1, 64, 16, torch.bfloat16)


def test_paged_attention_long_context_splits_into_partitions(device):
    seq_len = 32768 if device.type == "cuda" else 1500
    plan = assert_attention_matches_dense(device, [seq_len, 5], [1, 1], 8, 2, 128, 16, torch.bfloat16)
    assert plan.max_parts > 1  # flash-decoding: the context is spread over several blocks


def test_plan_with_a_length_bound_reads_new_lengths(device):
    """A plan built once over static buffers (as a CUDA graph is) sees lengths written later."""
    seq_lens, q_lens = [20, 33], [1, 1]
    query, k_cache, v_cache, tables, lens, starts, dense_k, dense_v = make_paged_inputs(
        seq_lens, q_lens, 4, 2, 64, 16, torch.float32)
    query, k_cache, v_cache, tables, lens, starts = on(device, query, k_cache, v_cache, tables, lens, starts)
    static_lens = torch.ones_like(lens)
    plan = cuda.plan_attention(tables, static_lens, starts, max_seq_len=64)
    static_lens.copy_(lens)
    got = cuda.paged_attention(query, k_cache, v_cache, plan, 0.125)
    expected = dense_attention(query.cpu(), dense_k, dense_v, seq_lens, q_lens, 0.125)
    torch.testing.assert_close(got.cpu().double(), expected, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv_matches_ref_on_strided_views_and_skips_padding(device, dtype):
    qkv = torch.randn(5, 3 * 2 * 64).to(dtype)  # fused projection rows: keys and values are views
    key, value = qkv[:, 128:256].view(5, 2, 64), qkv[:, 256:].view(5, 2, 64)
    slots = torch.tensor([3, 16, 47, -1, 20], dtype=torch.int64)
    expected_k, expected_v = torch.zeros(4, 16, 2, 64, dtype=dtype), torch.zeros(4, 16, 2, 64, dtype=dtype)
    ref.store_kv(key, value, expected_k, expected_v, slots)
    k_cache, v_cache = torch.zeros_like(expected_k, device=device), torch.zeros_like(expected_v, device=device)
    cuda.store_kv(*on(device, key, value), k_cache, v_cache, slots.to(device))
    assert torch.equal(k_cache.cpu(), expected_k) and torch.equal(v_cache.cpu(), expected_v)
    assert int((expected_k != 0).any(dim=(-1, -2)).sum()) == 4  # the padding token wrote nothing


def sampling_columns(num_rows: int, generator: torch.Generator):
    def pattern(values: list) -> torch.Tensor:
        return torch.tensor(values * (num_rows // len(values) + 1))[:num_rows]

    temperature = torch.rand(num_rows, generator=generator) + 0.3
    temperature[::9] = 0.0
    return (temperature, pattern([0, 1, 5, 50, 10**9, 0, 7, 100, 2000, 1024]).long(),
            pattern([1.0, 0.9, 0.5, 0.95, 0.3, 0.99, 1.0, 0.8, 0.9, 0.97]).float(),
            pattern([0.0, 0.0, 0.1, 0.0, 0.0, 0.05, 0.0, 0.2, 0.0, 0.0]).float(),
            torch.arange(num_rows, dtype=torch.int64) * 1234567 - 5, torch.arange(num_rows, dtype=torch.int64))


def test_sampling_draws_the_reference_tokens(device):
    """Same thresholds and the same counter-based noise: the very tokens ref.sample draws. On a GPU
    over 128k tokens, sums of 100k float32 masses in another order (and CUDA's expf) can move a
    top-p / min-p boundary past one token: such a row must match ref with those parameters
    nudged by 1e-4, and such rows must be rare."""
    num_rows, vocab = (256, 128256) if device.type == "cuda" else (40, 3000)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(num_rows, vocab, generator=g) * 3
    logits[1, 5:9] = 50.0  # ties at the top
    logits[2] = 0.0  # all tied: top-k 5 keeps the whole row, more than the kernel gathers
    columns = sampling_columns(num_rows, g)
    expected = ref.sample(logits, *columns)
    got = cuda.sample(*on(device, logits, *columns)).cpu()
    assert got.dtype == torch.int64
    if device.type != "cuda":
        assert torch.equal(got, expected)
        return
    temperature, top_k, top_p, min_p, seeds, offsets = columns
    nudged = [ref.sample(logits, temperature, top_k, top_p * f, min_p * f, seeds, offsets) for f in (0.9999, 1.0001)]
    explained = (got == expected) | (got == nudged[0]) | (got == nudged[1])
    assert bool(explained.all()), f"rows {(~explained).nonzero().flatten().tolist()} differ from the reference"
    assert int((got != expected).sum()) <= num_rows // 100


def test_sampling_with_top_k_one_or_tiny_top_p_is_greedy(device):
    logits = torch.randn(16, 500, generator=torch.Generator().manual_seed(1))
    ones = torch.ones(16)
    for top_k, top_p in ((1, 1.0), (0, 1e-6)):
        got = cuda.sample(*on(device, logits, ones, torch.full((16,), top_k), torch.full((16,), top_p),
                              torch.zeros(16), torch.arange(16), torch.zeros(16, dtype=torch.int64)))
        assert torch.equal(got.cpu(), logits.argmax(-1))


def test_penalties_match_ref_exactly(device):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 1000, generator=g) * 4
    prompt_mask = torch.rand(6, 1000, generator=g) < 0.1
    output_counts = (torch.rand(6, 1000, generator=g) < 0.05).int() * torch.randint(1, 4, (6, 1000), generator=g)
    rows = [torch.rand(6, generator=g) + 0.5, torch.rand(6, generator=g), torch.rand(6, generator=g)]
    expected = ref.apply_penalties(logits, prompt_mask, output_counts, *rows)
    got = cuda.apply_penalties(*on(device, logits, prompt_mask, output_counts, *rows))
    assert torch.equal(got.cpu(), expected)


@pytest.mark.gpu
def test_cupy_launches_are_captured_by_a_torch_cuda_graph():
    """Kernels launched from CuPy on torch's current stream land in the graph torch captures; a
    replay reads what was copied into the captured inputs since."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    cuda.use_launcher(None)
    seq_lens, q_lens = [300, 17, 64], [1, 1, 1]
    query, k_cache, v_cache, tables, lens, starts, dense_k, dense_v = make_paged_inputs(
        seq_lens, q_lens, 8, 2, 128, 16, torch.bfloat16)
    query, k_cache, v_cache, tables, lens, starts = on("cuda", query, k_cache, v_cache, tables, lens, starts)
    key, value = torch.zeros(3, 2, 128, dtype=torch.bfloat16, device="cuda"), torch.zeros_like(k_cache[0, :3])
    slots = torch.full((3,), -1, dtype=torch.int64, device="cuda")
    plan = cuda.plan_attention(tables, lens, starts, max_seq_len=1024)

    def step():
        cuda.store_kv(key, value, k_cache, v_cache, slots)
        return cuda.paged_attention(query, k_cache, v_cache, plan, 128 ** -0.5)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compile and load outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        out = step()
    new_query = torch.randn_like(query)
    query.copy_(new_query)
    graph.replay()
    torch.cuda.synchronize()
    expected = dense_attention(new_query.cpu(), dense_k, dense_v, seq_lens, q_lens, 128 ** -0.5)
    torch.testing.assert_close(out.cpu().double(), expected, **TOL[torch.bfloat16])


def test_token_bitmask_matches_ref_exactly(device):
    """Vocabularies that do and do not fill their last 32-bit word; rows allowing all, none, some."""
    g = torch.Generator().manual_seed(3)
    for vocab in (1000, 1024):
        logits = torch.randn(4, vocab, generator=g)
        bitmask = torch.randint(-2**31, 2**31 - 1, (4, -(-vocab // 32)), generator=g, dtype=torch.int64).int()
        bitmask[0], bitmask[1] = -1, 0
        expected = ref.apply_token_bitmask(logits, bitmask)
        got = cuda.apply_token_bitmask(*on(device, logits, bitmask))
        assert torch.equal(got.cpu(), expected)

"""Random shapes through the CUDA sources under the CPU emulator, against the dense oracle and
the reference sampler: batches of decodes and prefill chunks of any length, grouped heads,
page sizes, windows, partition sizes; sampling rows with any mix of parameters."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import cuda, ref
from tests.kernels.emulator import EmulatedLauncher
from tests.kernels.paged_inputs import dense_attention, make_paged_inputs

EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def emulated():
    previous = cuda.use_launcher(EmulatedLauncher())
    yield
    cuda.use_launcher(previous)


@st.composite
def batches(draw):
    num_seqs = draw(st.integers(1, 4))
    seq_lens = draw(st.lists(st.integers(1, 150), min_size=num_seqs, max_size=num_seqs))
    q_lens = [draw(st.sampled_from([1, 1, n, max(1, n // 3)])) for n in seq_lens]  # decode, fresh, chunk
    num_kv_heads = draw(st.sampled_from([1, 2, 3]))
    group = draw(st.sampled_from([1, 2, 3, 4, 7]))
    return seq_lens, q_lens, num_kv_heads * group, num_kv_heads


@EXAMPLES
@given(batch=batches(), block_size=st.sampled_from([8, 16, 32]), head_dim=st.sampled_from([64, 96]),
       window=st.sampled_from([None, None, 1, 7, 40]), partition=st.sampled_from([32, 64, 256]),
       seed=st.integers(0, 2**16))
def test_paged_attention_on_random_batches(batch, block_size, head_dim, window, partition, seed, monkeypatch):
    seq_lens, q_lens, num_q_heads, num_kv_heads = batch
    monkeypatch.setattr(cuda, "MIN_PARTITION", partition)
    query, k_cache, v_cache, tables, lens, starts, dense_k, dense_v = make_paged_inputs(
        seq_lens, q_lens, num_q_heads, num_kv_heads, head_dim, block_size, torch.float32, seed)
    plan = cuda.plan_attention(tables, lens, starts, window)
    got = cuda.paged_attention(query, k_cache, v_cache, plan, 0.1)
    expected = dense_attention(query, dense_k, dense_v, seq_lens, q_lens, 0.1, window)
    torch.testing.assert_close(got.double(), expected, atol=3e-5, rtol=3e-5)


@EXAMPLES
@given(num_rows=st.integers(1, 6), vocab=st.integers(2, 700), seed=st.integers(0, 2**16),
       data=st.data())
def test_sampling_on_random_rows(num_rows, vocab, seed, data):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, vocab, generator=g) * data.draw(st.sampled_from([0.1, 1.0, 8.0]))
    if data.draw(st.booleans()):  # quantised logits: many ties
        logits = logits.round()

    def column(strategy: st.SearchStrategy) -> list:
        return [data.draw(strategy) for _ in range(num_rows)]

    temperature = torch.tensor(column(st.sampled_from([0.0, 0.5, 1.0, 1.7])))
    top_k = torch.tensor(column(st.sampled_from([0, 1, 2, 10, vocab - 1, vocab, vocab + 5])))
    top_p = torch.tensor(column(st.sampled_from([1.0, 0.999, 0.9, 0.5, 0.01])))
    min_p = torch.tensor(column(st.sampled_from([0.0, 0.0, 0.05, 0.5])))
    seeds = torch.tensor(column(st.integers(-2**63, 2**63 - 1)))
    offsets = torch.tensor(column(st.integers(0, 10**6)))
    expected = ref.sample(logits, temperature, top_k, top_p, min_p, seeds, offsets)
    assert torch.equal(cuda.sample(logits, temperature, top_k, top_p, min_p, seeds, offsets), expected)

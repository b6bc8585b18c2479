"""Paged attention of kernels.ref and kernels.cpu, and the reference's KV writes, against a dense oracle."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import contract
from tests.kernels.paged_inputs import dense_attention, make_paged_inputs

ops = kernels.load("ref")
ATTENTION = {"ref": ops, "cpu": kernels.load("cpu")}  # cpu: the C decode kernel, built at first use
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
       torch.float16: dict(atol=3e-3, rtol=3e-3)}

CASES = {  # (seq_lens, q_lens)
    "decode-one": ([1], [1]),
    "decode-one-long": ([300], [1]),  # batch-1 decode: the unmasked SDPA path
    "decode-equal-lengths": ([40, 40], [1, 1]),  # several rows, nothing to mask
    "decode-block-edges": ([15, 16, 17], [1, 1, 1]),
    "decode-ragged": ([300, 1, 64], [1, 1, 1]),
    "prefill-fresh": ([33], [33]),
    "prefill-chunk-after-cache": ([50], [18]),
    "mixed": ([40, 7, 129, 16], [1, 7, 32, 1]),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("block_size", [16, 8])
@pytest.mark.parametrize("heads", [(9, 3), (4, 4), (8, 1)], ids=["group3", "mha", "mqa"])
@pytest.mark.parametrize("kind", sorted(ATTENTION))
def test_paged_attention_matches_dense(kind, case, dtype, block_size, heads):
    if kind == "cpu" and dtype == torch.float16:
        pytest.skip("no float16 CPU kernel: auto serves float16 models with the reference")
    ops = ATTENTION[kind]
    seq_lens, q_lens = CASES[case]
    query, k_cache, v_cache, tables, lens, starts, dense_k, dense_v = make_paged_inputs(
        seq_lens, q_lens, num_q_heads=heads[0], num_kv_heads=heads[1], head_dim=64, block_size=block_size,
        dtype=dtype)
    plan = ops.plan_attention(tables, lens, starts)
    got = ops.paged_attention(query, k_cache, v_cache, plan, scale=0.125)
    expected = dense_attention(query, dense_k, dense_v, seq_lens, q_lens, 0.125)
    assert got.shape == query.shape and got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, **TOL[dtype])


@pytest.mark.parametrize("case", ["decode-one-long", "decode-equal-lengths", "decode-ragged", "prefill-fresh",
                                  "prefill-chunk-after-cache", "mixed"])
@pytest.mark.parametrize("window", [1, 5, 16, 17, 40, 400])  # 400: wider than every context
@pytest.mark.parametrize("kind", sorted(ATTENTION))
def test_sliding_window_attention_matches_dense(kind, case, window):
    ops = ATTENTION[kind]
    seq_lens, q_lens = CASES[case]
    query, k_cache, v_cache, tables, lens, starts, dense_k, dense_v = make_paged_inputs(
        seq_lens, q_lens, num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=16, dtype=torch.float32)
    got = ops.paged_attention(query, k_cache, v_cache, ops.plan_attention(tables, lens, starts, window), 0.2)
    expected = dense_attention(query, dense_k, dense_v, seq_lens, q_lens, 0.2, window)
    torch.testing.assert_close(got.double(), expected, **TOL[torch.float32])


def test_store_kv_writes_exact_slots():
    k_cache = torch.zeros(4, 16, 2, 8)
    v_cache = torch.zeros(4, 16, 2, 8)
    key, value = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    slots = torch.tensor([5, 16 * 2 + 15, 16 * 3], dtype=torch.int64)
    ops.store_kv(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache[0, 5], key[0]) and torch.equal(k_cache[2, 15], key[1])
    assert torch.equal(v_cache[3, 0], value[2])
    assert int((k_cache != 0).any(dim=(-1, -2)).sum()) == 3  # nothing else touched


def test_contract_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        contract.check_paged_attention(torch.zeros(1, 5, 8), torch.zeros(2, 16, 2, 8), torch.zeros(2, 16, 2, 8), 1)
    with pytest.raises(ValueError, match="query_start_loc"):
        ops.plan_attention(torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32),
                           torch.tensor([0, 1, 2], dtype=torch.int32))
    plan = ops.plan_attention(torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32),
                              torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="the attention plan 1"):
        ops.paged_attention(torch.zeros(2, 4, 8), torch.zeros(2, 16, 2, 8), torch.zeros(2, 16, 2, 8), plan, 1.0)
    with pytest.raises(ValueError, match="slot_mapping"):
        ops.store_kv(torch.zeros(2, 2, 8), torch.zeros(2, 2, 8), torch.zeros(2, 16, 2, 8),
                     torch.zeros(2, 16, 2, 8), torch.zeros(3, dtype=torch.int64))

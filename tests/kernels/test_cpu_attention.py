"""kernels.cpu (C kernels built at first use) against the reference; its attention against the dense
oracle runs in test_ref_attention.py beside the reference's."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import cpu, cpu_build
from tests.kernels.paged_inputs import dense_attention, make_paged_inputs
from tests.kernels.test_ref_attention import TOL

ops = kernels.load("cpu")
ref = kernels.load("ref")


@pytest.mark.parametrize("head_dim", [64, 96, 128])
def test_strided_query_rows_as_the_model_passes_them(head_dim):
    """q is a view into the fused q|k output (rows strided past the k heads): same answer as ref."""
    seq_lens, q_lens = [70, 3, 33, 200], [1, 3, 1, 1]
    _, k_cache, v_cache, tables, lens, starts, _, _ = make_paged_inputs(
        seq_lens, q_lens, num_q_heads=8, num_kv_heads=2, head_dim=head_dim, block_size=16, dtype=torch.bfloat16)
    qk = torch.randn(sum(q_lens), 10, head_dim).bfloat16()  # [T, Hq + Hkv, D]
    query = qk[:, :8]  # [T, Hq, D], row stride 10 * D
    got = ops.paged_attention(query, k_cache, v_cache, ops.plan_attention(tables, lens, starts), 0.1)
    expected = ref.paged_attention(query, k_cache, v_cache, ref.plan_attention(tables, lens, starts), 0.1)
    torch.testing.assert_close(got.float(), expected.float(), **TOL[torch.bfloat16])


@pytest.mark.parametrize("seq_lens", [[1000], [700, 5, 333, 64]], ids=["one-long-row", "ragged"])
@pytest.mark.parametrize("window", [None, 40, 100])
@pytest.mark.parametrize(("heads", "head_dim"), [((9, 3), 64), ((12, 1), 96), ((4, 4), 128), ((6, 2), 80)],
                         ids=["group3", "group12", "mha-128", "dim80"])
def test_bfloat16_decode_matches_dense(seq_lens, window, heads, head_dim):
    """The bfloat16 decode kernel (on AVX-512 BF16: rows split into spans when few, a group past the
    specialized sizes, head_dim 80 on the portable path) against the float64 oracle."""
    q_lens = [1] * len(seq_lens)
    query, k_cache, v_cache, tables, lens, starts, dense_k, dense_v = make_paged_inputs(
        seq_lens, q_lens, num_q_heads=heads[0], num_kv_heads=heads[1], head_dim=head_dim, block_size=16,
        dtype=torch.bfloat16, seed=len(seq_lens))
    got = ops.paged_attention(query, k_cache, v_cache, ops.plan_attention(tables, lens, starts, window), 0.1)
    expected = dense_attention(query, dense_k, dense_v, seq_lens, q_lens, 0.1, window)
    torch.testing.assert_close(got.double(), expected, **TOL[torch.bfloat16])


def test_random_batches_match_the_reference():
    generator = torch.Generator().manual_seed(1)
    for trial in range(20):
        num_seqs = int(torch.randint(1, 9, (1,), generator=generator))
        seq_lens = torch.randint(1, 300, (num_seqs,), generator=generator).tolist()
        q_lens = [1 if torch.rand(1, generator=generator) < 0.7 else int(torch.randint(1, n + 1, (1,),
                  generator=generator)) for n in seq_lens]
        query, k_cache, v_cache, tables, lens, starts, _, _ = make_paged_inputs(
            seq_lens, q_lens, num_q_heads=6, num_kv_heads=2, head_dim=64, block_size=16, dtype=torch.float32,
            seed=trial)
        got = ops.paged_attention(query, k_cache, v_cache, ops.plan_attention(tables, lens, starts), 0.125)
        expected = ref.paged_attention(query, k_cache, v_cache, ref.plan_attention(tables, lens, starts), 0.125)
        torch.testing.assert_close(got, expected, **TOL[torch.float32])


@pytest.mark.parametrize("window", [None, 8])
def test_short_queries_attend_a_row_a_token_through_the_decode_kernel(window):
    """Verified drafts and short last chunks (up to SHORT_QUERY tokens) beside a decode and a long
    chunk: each of their tokens is a kernel row whose context ends at that token."""
    seq_lens, q_lens = [70, 5, 40, 200, 17], [5, 5, 1, 17, 16]
    query, k_cache, v_cache, tables, lens, starts, dense_k, dense_v = make_paged_inputs(
        seq_lens, q_lens, num_q_heads=6, num_kv_heads=2, head_dim=64, block_size=16, dtype=torch.float32, seed=3)
    plan = ops.plan_attention(tables, lens, starts, window)
    assert plan.decode_rows.tolist() == [*range(11), *range(28, 44)]
    assert plan.decode_lens.tolist() == [*range(66, 71), *range(1, 6), 40, *range(2, 18)]
    assert [q_len for _, _, q_len, _ in plan.prefill.prefills] == [17]
    got = ops.paged_attention(query, k_cache, v_cache, plan, 0.125)
    expected = dense_attention(query, dense_k, dense_v, seq_lens, q_lens, 0.125, window)
    torch.testing.assert_close(got.double(), expected, **TOL[torch.float32])


def test_auto_picks_the_cpu_kernels_where_they_cover_the_model():
    assert kernels.load("auto", "cpu", ("bfloat16", 64, 16)) is cpu
    assert kernels.load("auto", "cpu", ("float16", 64, 16)) is ref  # no float16 kernel
    assert kernels.load("auto", "cpu", ("bfloat16", 72, 16)) is ref  # head_dim not a multiple of 16
    with pytest.raises(ValueError, match="float16"):
        kernels.load("cpu", "cpu", ("float16", 64, 16))


def test_a_failed_build_names_the_compiler_error(monkeypatch, tmp_path):
    broken = tmp_path / "src"
    broken.mkdir()
    (broken / "bad.c").write_text("int f( {\n")
    monkeypatch.setattr(cpu_build, "SOURCE_DIR", str(broken))
    monkeypatch.setenv("FORGE_CACHE_DIR", str(tmp_path / "cache"))
    cpu_build.library.cache_clear()
    try:
        with pytest.raises(cpu_build.BuildError, match="bad.c"):
            cpu_build.library()
    finally:
        cpu_build.library.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("num_tokens", [1, 3, 17])
def test_rms_norm_matches_the_reference(dtype, with_residual, num_tokens):
    generator = torch.Generator().manual_seed(num_tokens)
    x = (torch.randn(num_tokens, 576, generator=generator) * 3).to(dtype)
    residual = torch.randn(num_tokens, 576, generator=generator).to(dtype) if with_residual else None
    weight = (1 + 0.1 * torch.randn(576, generator=generator)).to(dtype)
    normed, summed = ops.rms_norm(x, weight, 1e-5, residual)
    expected, expected_sum = ref.rms_norm(x, weight, 1e-5, residual)
    assert torch.equal(summed, expected_sum)  # the residual add rounds exactly as torch does
    # Every rounding step is the reference's; only the sum of squares runs in another order, which
    # moves a float32 result by a few ulps (rsqrt and two roundings) and, rarely, a bfloat16 one across a rounding boundary.
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -20  # float32: up to 8 ulps
    torch.testing.assert_close(normed, expected, atol=0, rtol=ulp)
    if dtype == torch.bfloat16:
        assert (normed != expected).float().mean() < 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv_writes_what_the_reference_writes_from_strided_rows(dtype):
    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(5, 8, 16, generator=generator).to(dtype)  # [T, Hq + 2 Hkv, D]: q 4 heads, k 2, v 2
    key, value = qkv[:, 4:6], qkv[:, 6:8]  # strided token rows, as the model passes them
    slots = torch.tensor([3, -1, 17, 40, 63], dtype=torch.int32)  # a padding slot skipped
    caches = [torch.zeros(4, 16, 2, 16, dtype=dtype) for _ in range(4)]
    ops.store_kv(key, value, caches[0], caches[1], slots)
    ref.store_kv(key, value, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    assert int((caches[0] != 0).any(dim=(-1, -2)).sum()) == 4
    with pytest.raises(ValueError, match="past the cache"):
        ops.store_kv(key, value, caches[0], caches[1], torch.tensor([0, 1, 2, 3, 64]))

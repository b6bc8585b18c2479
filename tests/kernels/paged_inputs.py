"""Random paged-attention inputs with a scattered block layout, and a dense oracle."""

from __future__ import annotations

import torch


def make_paged_inputs(seq_lens: list[int], q_lens: list[int], num_q_heads: int, num_kv_heads: int,
                      head_dim: int, block_size: int, dtype: torch.dtype, seed: int = 0):
    """Returns (query, k_cache, v_cache, block_tables, seq_lens, query_start_loc, dense_k, dense_v)
    where dense_k[i] / dense_v[i] are [seq_len_i, num_kv_heads, head_dim] contiguous copies."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    order = torch.randperm(num_blocks, generator=g).tolist()  # scattered, not contiguous
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    width = max(blocks_per_seq)
    tables, dense_k, dense_v = [], [], []
    for n, count in zip(seq_lens, blocks_per_seq):
        ids, order = order[:count], order[count:]
        tables.append(ids + [ids[0]] * (width - count))
        dense_k.append(k_cache[ids].flatten(0, 1)[:n])
        dense_v.append(v_cache[ids].flatten(0, 1)[:n])
    query = torch.randn(sum(q_lens), num_q_heads, head_dim, generator=g).to(dtype)
    starts = torch.tensor([0] + q_lens).cumsum(0).to(torch.int32)
    return (query, k_cache, v_cache, torch.tensor(tables, dtype=torch.int32),
            torch.tensor(seq_lens, dtype=torch.int32), starts, dense_k, dense_v)


def dense_attention(query, dense_k, dense_v, seq_lens, q_lens, scale, window=None) -> torch.Tensor:
    """Explicit float64 softmax attention, one query row at a time: the obviously right answer."""
    out = torch.empty(query.shape, dtype=torch.float64)
    num_q_heads, num_kv_heads = query.shape[1], dense_k[0].shape[1]
    group = num_q_heads // num_kv_heads
    row = 0
    for k, v, n, q_len in zip(dense_k, dense_v, seq_lens, q_lens):
        k = k.double().repeat_interleave(group, dim=1)  # [n, Hq, D]
        v = v.double().repeat_interleave(group, dim=1)
        for j in range(q_len):
            visible = n - q_len + j + 1  # causal: keys up to this query's own position
            first = 0 if window is None else max(0, visible - window)  # and the window's latest keys
            q = query[row].double()  # [Hq, D]
            weights = (torch.einsum("hd,nhd->hn", q, k[first:visible]) * scale).softmax(dim=-1)
            out[row] = torch.einsum("hn,nhd->hd", weights, v[first:visible])
            row += 1
    return out

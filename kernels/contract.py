"""The contract every kernel implementation honours: the KV-cache layout and argument checks.

KV cache layout (one pair of tensors per layer):
    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    A token's slot is `block_id * block_size + offset_in_block`; `slot_mapping[t]` is the slot
    token t of the flat batch writes to, or -1 for a padding token (CUDA-graph batches) that
    writes nothing.

Flat batch layout (prefill chunks and decodes mixed, one sequence after another):
    query:           [num_tokens, num_q_heads, head_dim]
    query_start_loc: [num_seqs + 1] int32/int64, sequence i owns query rows
                     query_start_loc[i]:query_start_loc[i+1]; these are the LAST rows of its context
    seq_lens:        [num_seqs] total context length of each sequence, the new tokens included
                     (their KV is stored before attention runs)
    block_tables:    [num_seqs, max_blocks_per_seq] block ids, padded with any valid id

Attention is planned once per step (`plan_attention(block_tables, seq_lens, query_start_loc,
sliding_window, max_seq_len)`, whose result is opaque to callers) and run per layer
(`paged_attention(query, k_cache, v_cache, plan, scale)`). `max_seq_len`, when given, bounds
seq_lens for a plan that is replayed with new lengths written into the same tensors (CUDA
graphs); the reference plan is never replayed and reads the lengths themselves. Every
implementation (kernels/ref.py, kernels/cuda.py, kernels/cpu.py) calls these checks first.
"""

from __future__ import annotations

import torch

_INDEX_DTYPES = (torch.int32, torch.int64)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def check_store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    _require(key.dim() == 3 and key.shape == value.shape, f"key/value must be [num_tokens, num_kv_heads, "
             f"head_dim] and equal, got {tuple(key.shape)} and {tuple(value.shape)}")
    _require(k_cache.dim() == 4 and k_cache.shape == v_cache.shape,
             "k_cache/v_cache must be [num_blocks, block_size, num_kv_heads, head_dim] and equal")
    _require(tuple(k_cache.shape[2:]) == tuple(key.shape[1:]),
             f"cache heads/head_dim {tuple(k_cache.shape[2:])} != key {tuple(key.shape[1:])}")
    _require(slot_mapping.dim() == 1 and slot_mapping.shape[0] == key.shape[0],
             "slot_mapping must be [num_tokens]")
    _require(slot_mapping.dtype in _INDEX_DTYPES, "slot_mapping must be int32 or int64")
    _require(key.dtype == k_cache.dtype, f"key dtype {key.dtype} != cache dtype {k_cache.dtype}")


def check_attention_plan(block_tables: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                         sliding_window: int | None, max_seq_len: int | None) -> None:
    _require(sliding_window is None or sliding_window >= 1, "sliding_window must be None or >= 1")
    _require(max_seq_len is None or max_seq_len >= 1, "max_seq_len must be None or >= 1")
    num_seqs = seq_lens.shape[0]
    _require(block_tables.dim() == 2 and block_tables.shape[0] == num_seqs,
             "block_tables must be [num_seqs, max_blocks_per_seq]")
    _require(query_start_loc.shape == (num_seqs + 1,), "query_start_loc must be [num_seqs + 1]")
    for name, t in (("block_tables", block_tables), ("seq_lens", seq_lens),
                    ("query_start_loc", query_start_loc)):
        _require(t.dtype in _INDEX_DTYPES, f"{name} must be int32 or int64")


def check_paged_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          num_planned_tokens: int) -> None:
    _require(query.dim() == 3, "query must be [num_tokens, num_q_heads, head_dim]")
    _require(k_cache.dim() == 4 and k_cache.shape == v_cache.shape,
             "k_cache/v_cache must be [num_blocks, block_size, num_kv_heads, head_dim] and equal")
    num_q_heads, num_kv_heads = query.shape[1], k_cache.shape[2]
    _require(num_q_heads % num_kv_heads == 0,
             f"num_q_heads {num_q_heads} must be a multiple of num_kv_heads {num_kv_heads}")
    _require(query.shape[2] == k_cache.shape[3], "query head_dim != cache head_dim")
    _require(query.shape[0] == num_planned_tokens,
             f"query has {query.shape[0]} tokens, the attention plan {num_planned_tokens}")


def check_cpu_decode(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor) -> None:
    """The C decode kernel reads raw memory: rows may be strided, heads and values must be dense."""
    _require(query.dtype == k_cache.dtype == v_cache.dtype == out.dtype, "query, caches and out must share a dtype")
    _require(query.dtype in (torch.bfloat16, torch.float32), f"no CPU decode kernel for {query.dtype}")
    _require_raw_rows(k_cache, v_cache, query=query, out=out)
    _require(out.shape == query.shape, "out must have the query's shape")


def check_cpu_store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """The C KV write copies raw rows: token rows may be strided, each token's heads must be dense."""
    _require(value.dtype == key.dtype == v_cache.dtype, "key, value and caches must share a dtype")
    _require_raw_rows(k_cache, v_cache, key=key, value=value)


def _require_raw_rows(k_cache: torch.Tensor, v_cache: torch.Tensor, **rows: torch.Tensor) -> None:
    """What C code reading raw memory needs: contiguous caches, and [tokens, heads, head_dim]
    tensors whose token rows may be strided but whose heads are dense."""
    _require(k_cache.is_contiguous() and v_cache.is_contiguous(), "k_cache/v_cache must be contiguous")
    for name, t in rows.items():
        _require(t.stride(2) == 1 and t.stride(1) == t.shape[2], f"{name} must be dense within a token row")


def check_rms_norm_residual(x: torch.Tensor, residual: torch.Tensor) -> None:
    _require(residual.shape == x.shape and residual.dtype == x.dtype,
             f"residual {tuple(residual.shape)} {residual.dtype} must match x {tuple(x.shape)} {x.dtype}")


def check_sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                 min_p: torch.Tensor, seeds: torch.Tensor, offsets: torch.Tensor) -> None:
    _require(logits.dim() == 2, "logits must be [num_rows, vocab_size]")
    _require(logits.dtype == torch.float32, "logits must be float32")
    num_rows = logits.shape[0]
    for name, t in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p), ("min_p", min_p),
                    ("seeds", seeds), ("offsets", offsets)):
        _require(t.shape == (num_rows,), f"{name} must be [num_rows]")
    _require(seeds.dtype == torch.int64 and offsets.dtype == torch.int64, "seeds/offsets must be int64")


def check_apply_penalties(logits: torch.Tensor, prompt_mask: torch.Tensor, output_counts: torch.Tensor,
                          repetition: torch.Tensor, presence: torch.Tensor, frequency: torch.Tensor) -> None:
    _require(logits.dim() == 2, "logits must be [num_rows, vocab_size]")
    _require(prompt_mask.shape == logits.shape and prompt_mask.dtype == torch.bool,
             "prompt_mask must be bool [num_rows, vocab_size]")
    _require(output_counts.shape == logits.shape, "output_counts must be [num_rows, vocab_size]")
    for name, t in (("repetition", repetition), ("presence", presence), ("frequency", frequency)):
        _require(t.shape == (logits.shape[0],), f"{name} must be [num_rows]")


def check_apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    _require(logits.dim() == 2 and logits.dtype == torch.float32, "logits must be float32 [num_rows, vocab_size]")
    words = -(-logits.shape[1] // 32)
    _require(bitmask.dtype == torch.int32 and tuple(bitmask.shape) == (logits.shape[0], words),
             f"bitmask must be int32 [num_rows, {words}] (one bit a token); got {tuple(bitmask.shape)} {bitmask.dtype}")

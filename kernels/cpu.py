"""The CPU implementation of kernels/ref.py's ops: same names, parameters and results.

Decode rows (one query token) go to a C kernel (kernels/csrc/cpu/decode_attention.c) that reads the
paged KV cache in place; the reference gathers each row's blocks into contiguous copies first
and runs two batched matmuls, which at 16 rows cost more than the model's attention arithmetic.
RMSNorm with its residual add runs as one C pass (kernels/csrc/cpu/rms_norm.c) where the reference
runs about ten torch ops a call, twice a layer, and KV writes as one call (kernels/csrc/cpu/store_kv.c)
instead of a mask, a host sync and two index copies; grammar masks are one C pass too. Prefill
chunks and sampling are the reference's own code. Decode steps of bfloat16 models with 4-bit layers skip these wrappers: the
C decoder (kernels/cpu_decoder.py) runs all their layers in one call.
"""

from __future__ import annotations

import ctypes
import dataclasses

import torch

from kernels import contract, cpu_build, ref

GRAPH_SAFE = False
C_MATMULS = True  # 4-bit layers and the LM head run kernels/cpu_matmul.py's C matmuls
DTYPES = (torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256  # decode_attention.c's limits: head_dim a multiple of 16 up to 256, blocks up to 64
HEAD_DIM_MULTIPLE = 16
MAX_BLOCK_SIZE = 64
MAX_HIDDEN = 16384  # rms_norm.c keeps a row of float32 on the stack
# Sequences with at most this many query tokens attend through the decode kernel, a row a token (it
# reads each row's context in place: cheaper than gathering the context once while rows are few).
SHORT_QUERY = 16

apply_penalties = ref.apply_penalties
sample = ref.sample


@dataclasses.dataclass(frozen=True)
class CpuAttentionPlan:
    """The reference's plan for the prefill chunks, and the decode rows in the kernel's terms."""

    prefill: ref.AttentionPlan  # its decode fields are None: the kernel takes those rows
    decode_rows: torch.Tensor | None  # [R] int64 flat token rows of short-query sequences (SHORT_QUERY)
    decode_tables: torch.Tensor | None  # [R, max_blocks] int32, contiguous
    decode_lens: torch.Tensor | None  # [R] int32 context of each row, through its own token
    sliding_window: int | None

    @property
    def num_tokens(self) -> int:
        return self.prefill.num_tokens


def covers(dtype: torch.dtype, head_dim: int, block_size: int) -> bool:
    return (dtype in DTYPES and head_dim <= MAX_HEAD_DIM and head_dim % HEAD_DIM_MULTIPLE == 0
            and block_size <= MAX_BLOCK_SIZE)


def plan_attention(block_tables: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                   sliding_window: int | None = None, max_seq_len: int | None = None) -> CpuAttentionPlan:
    """Sequences of up to SHORT_QUERY tokens (decodes, verified drafts, short last chunks) go to
    the decode kernel, one row a token, each row's context ending at its own token: it reads the
    paged KV in place where the reference gathers a copy of the whole context every layer."""
    contract.check_attention_plan(block_tables, seq_lens, query_start_loc, sliding_window, max_seq_len)
    num_seqs = seq_lens.shape[0]
    num_tokens = int(query_start_loc[-1])
    if num_tokens == num_seqs:  # pure decode: every row is the kernel's, no reference plan at all
        return CpuAttentionPlan(ref.AttentionPlan(num_seqs, None, None, None, 0, [], sliding_window),
                                torch.arange(num_seqs), block_tables.to(torch.int32).contiguous(),
                                seq_lens.to(torch.int32).contiguous(), sliding_window)
    q_lens = query_start_loc[1:].long() - query_start_loc[:-1].long()  # [S]
    starts, lens = query_start_loc.tolist(), seq_lens.tolist()
    prefills = [(block_tables[i], starts[i], n, lens[i]) for i, n in enumerate(q_lens.tolist()) if n > SHORT_QUERY]
    prefill = ref.AttentionPlan(num_tokens, None, None, None, 0, prefills, sliding_window)
    seq_of_token = torch.repeat_interleave(torch.arange(num_seqs), q_lens)  # [T]
    rows = torch.nonzero(q_lens[seq_of_token] <= SHORT_QUERY).squeeze(1)  # [R] flat token rows
    if rows.numel() == 0:
        return CpuAttentionPlan(prefill, None, None, None, sliding_window)
    seqs = seq_of_token[rows]  # [R]
    # [R]: a row's context runs through its own token: its sequence's length less the tokens after it
    ctx_lens = seq_lens[seqs].long() - (query_start_loc[1:][seqs].long() - 1 - rows)
    return CpuAttentionPlan(prefill, rows.contiguous(), block_tables[seqs].to(torch.int32).contiguous(),
                            ctx_lens.to(torch.int32).contiguous(), sliding_window)


def paged_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: CpuAttentionPlan,
                    scale: float) -> torch.Tensor:
    """Causal attention of a mixed batch over paged KV -> [num_tokens, num_q_heads, head_dim]."""
    out = ref.paged_attention(query, k_cache, v_cache, plan.prefill, scale)  # prefill rows filled
    if plan.decode_rows is not None:
        _decode(query, k_cache, v_cache, plan, scale, out)
    return out


def _decode(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: CpuAttentionPlan,
            scale: float, out: torch.Tensor) -> None:
    contract.check_cpu_decode(query, k_cache, v_cache, out)
    num_q_heads, head_dim = query.shape[1], query.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    status = cpu_build.library().decode_attention(
        _ptr(query), ctypes.c_int64(query.stride(0)), _ptr(plan.decode_rows), _ptr(k_cache), _ptr(v_cache),
        _ptr(plan.decode_tables), ctypes.c_int64(plan.decode_tables.stride(0)), _ptr(plan.decode_lens),
        ctypes.c_int(plan.decode_rows.shape[0]), ctypes.c_int(num_q_heads), ctypes.c_int(num_kv_heads),
        ctypes.c_int(head_dim), ctypes.c_int(block_size), ctypes.c_int(plan.sliding_window or 0),
        ctypes.c_float(scale), _ptr(out), ctypes.c_int64(out.stride(0)), ctypes.c_int(query.dtype == torch.bfloat16))
    if status != 0:
        raise ValueError(f"decode_attention covers head_dim a multiple of {HEAD_DIM_MULTIPLE} up to {MAX_HEAD_DIM} "
                         f"and block_size <= {MAX_BLOCK_SIZE}")


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """kernels.ref.store_kv in one call: rows to their slots, negative slots skipped."""
    contract.check_store_kv(key, value, k_cache, v_cache, slot_mapping)
    contract.check_cpu_store_kv(key, value, k_cache, v_cache)
    slots = slot_mapping.to(torch.int64).contiguous()  # held here: the kernel reads its memory
    element = key.element_size()
    status = cpu_build.library().store_kv(
        _ptr(key), ctypes.c_int64(key.stride(0) * element), _ptr(value), ctypes.c_int64(value.stride(0) * element),
        _ptr(k_cache), _ptr(v_cache), _ptr(slots), ctypes.c_int(slots.shape[0]),
        ctypes.c_int64(key.shape[1] * key.shape[2] * element), ctypes.c_int64(k_cache.shape[0] * k_cache.shape[1]))
    if status != 0:
        raise ValueError(f"slot_mapping holds a slot past the cache's {k_cache.shape[0] * k_cache.shape[1]} slots")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """kernels.ref.rms_norm in one pass: (normed, x + residual or x)."""
    if x.dtype not in DTYPES or weight.dtype != x.dtype or x.dim() != 2 or x.shape[1] > MAX_HIDDEN:
        return ref.rms_norm(x, weight, eps, residual)
    x, weight = x.contiguous(), weight.contiguous()  # held here: the kernel reads their memory
    normed = torch.empty_like(x)
    summed = x if residual is None else torch.empty_like(x)
    if residual is not None:
        contract.check_rms_norm_residual(x, residual)
        residual = residual.contiguous()
    cpu_build.library().rms_norm(
        _ptr(x), None if residual is None else _ptr(residual), _ptr(weight), _ptr(normed),
        _ptr(summed), ctypes.c_int(x.shape[0]), ctypes.c_int(x.shape[1]), ctypes.c_float(eps),
        ctypes.c_int(x.dtype == torch.bfloat16))
    return normed, summed


def _ptr(tensor: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """ref.apply_token_bitmask in one C pass (kernels/csrc/cpu/token_bitmask.c): for 16 rows of a
    49k vocabulary about 0.3 ms, where the reference's shifts took 3.5 and numpy's bit unpacking 1.2."""
    contract.check_apply_token_bitmask(logits, bitmask)
    logits, bitmask = logits.contiguous(), bitmask.contiguous()
    out = torch.empty_like(logits)
    cpu_build.library().apply_token_bitmask(_ptr(logits), _ptr(bitmask), _ptr(out), ctypes.c_int(logits.shape[0]),
                                            ctypes.c_int(logits.shape[1]), ctypes.c_int(bitmask.shape[1]))
    return out

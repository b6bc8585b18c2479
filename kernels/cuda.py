"""The CUDA implementation of kernels/ref.py's ops: same names, parameters and results.

Kernels live in kernels/csrc and are compiled by CuPy (NVRTC) once per constant set
(kernels/sources.py). Tensors are handed over as raw device pointers, zero-copy, and every launch
goes on torch's current stream, so ordering with torch's own kernels and CUDA-graph capture hold.
Nothing here allocates through CuPy (its memory pool would break graph capture): scratch space
comes from torch. A launch compiles its module the first time; the model runner warms every
variant up before it captures graphs.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch

from kernels import contract, ref, sources

GRAPH_SAFE = True  # every op is capturable; a plan built over static buffers replays with new lengths
C_MATMULS = False  # the CPU's C matmuls: not on a GPU
TILE_TOKENS = 8  # query tokens per attention tile; a decode row is a tile of one
MIN_PARTITION = 256  # fewest keys one attention block takes on; a multiple of 32
_COPY_THREADS = 128
_ELEMENTWISE_THREADS = 256

rms_norm = ref.rms_norm  # torch ops: capturable, and not where a GPU step spends its time

Launcher = Callable[[sources.Variant, str, tuple[int, int, int], int, Sequence[np.generic]], None]


class CupyLauncher:
    """Compiles modules with cupy.RawModule and launches on torch's current CUDA stream, on the
    device torch has current in the creating thread (the engine's compute thread sets it)."""

    def __init__(self) -> None:
        import cupy

        cupy.cuda.Device(torch.cuda.current_device()).use()
        self._cupy = cupy
        self._functions: dict[tuple[sources.Variant, str], object] = {}
        self._streams: dict[int, object] = {}

    def __call__(self, variant: sources.Variant, name: str, grid: tuple[int, int, int], threads: int,
                 args: Sequence[np.generic]) -> None:
        function = self._functions.get((variant, name))
        if function is None:
            module = self._cupy.RawModule(code=sources.read(variant.source), options=variant.options())
            function = self._functions[(variant, name)] = module.get_function(name)
        with self._stream(torch.cuda.current_stream().cuda_stream):
            function(grid, (threads,), tuple(args))

    def _stream(self, handle: int) -> object:
        """A CuPy view of a torch stream (cached: graph capture switches torch to a side stream)."""
        stream = self._streams.get(handle)
        if stream is None:
            if hasattr(self._cupy.cuda.Stream, "from_external"):  # CuPy >= 14
                stream = self._cupy.cuda.Stream.from_external(_StreamHandle(handle))
            else:
                stream = self._cupy.cuda.ExternalStream(handle)
            self._streams[handle] = stream
        return stream


class _StreamHandle:
    """The CUDA stream protocol over a raw handle (what Stream.from_external reads)."""

    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __cuda_stream__(self) -> tuple[int, int]:
        return 0, self.handle


_launcher: Launcher | None = None


def use_launcher(launcher: Launcher | None) -> Launcher | None:
    """Replace how kernels are compiled and launched (tests run them under a CPU emulator);
    None restores CuPy. Returns the previous launcher."""
    global _launcher
    previous, _launcher = _launcher, launcher
    return previous


def _launch(variant: sources.Variant, name: str, grid: tuple[int, int, int], threads: int,
            args: Sequence[torch.Tensor | None | np.generic]) -> None:
    """Tensors (and None, a null pointer) pass as raw pointers; `args` keeps temporaries alive
    until the launch is queued."""
    global _launcher
    if _launcher is None:
        _launcher = CupyLauncher()
    _launcher(variant, name, grid, threads, [_pointer(a) if a is None or isinstance(a, torch.Tensor) else a
                                             for a in args])


def _pointer(t: torch.Tensor | None) -> np.uint64:
    return np.uint64(0 if t is None else t.data_ptr())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- KV-cache writes --------------------------------------------------------------------------------
def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write each token's key/value ([num_tokens, num_kv_heads, head_dim]) into its cache slot;
    a negative slot (padding of a CUDA-graph batch) writes nothing."""
    contract.check_store_kv(key, value, k_cache, v_cache, slot_mapping)
    _require_contiguous_cache(k_cache, v_cache)
    num_tokens = key.shape[0]
    if num_tokens == 0:
        return
    row_bytes = key.shape[1] * key.shape[2] * key.element_size()
    if row_bytes % 16:
        raise ValueError(f"a token's keys take {row_bytes} bytes; the CUDA kernel moves 16-byte words")
    key, value = _rows_of_words(key), _rows_of_words(value)
    slots = slot_mapping.to(torch.int64)
    _launch(sources.STORE_KV, "store_kv", (num_tokens, 1, 1), _COPY_THREADS,
            (key, value, k_cache, v_cache, slots,
             np.int64(key.stride(0) * key.element_size()), np.int64(value.stride(0) * value.element_size()),
             np.int32(row_bytes)))


def _rows_of_words(t: torch.Tensor) -> torch.Tensor:
    """t itself when each token row is contiguous and 16-byte aligned (views of the fused qkv
    projection usually are), else a contiguous copy."""
    rows_contiguous = t.stride(2) == 1 and t.stride(1) == t.shape[2]
    aligned = t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0
    return t if rows_contiguous and aligned else t.contiguous()


def _require_contiguous_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("the CUDA kernels need contiguous k_cache / v_cache")


# --- attention -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AttentionPlan:
    """Per-step attention metadata, built once by `plan_attention` and reused by every layer.
    Its tensors are the caller's own when they already have the kernel's dtype and layout, so a
    plan built over a CUDA graph's static buffers sees what is copied into them before a replay."""

    num_tokens: int
    tiles: torch.Tensor  # [num_tiles, 3] int32: sequence, first flat query row, query rows (<= TILE_TOKENS)
    tile_tokens: int  # the most query rows of any tile
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    sliding_window: int | None
    partition_size: int  # keys per attention block; a multiple of 32
    max_parts: int  # partitions of the longest context


def plan_attention(block_tables: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                   sliding_window: int | None = None, max_seq_len: int | None = None) -> AttentionPlan:
    """Cut each sequence's query rows into tiles of at most TILE_TOKENS and size the context
    partitions so that the grid fills the GPU. Reads query_start_loc (and, unless max_seq_len
    bounds them, seq_lens) on the host: CUDA graphs plan once per bucket, before capture."""
    contract.check_attention_plan(block_tables, seq_lens, query_start_loc, sliding_window, max_seq_len)
    device = block_tables.device
    starts = query_start_loc.tolist()
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max()) if seq_lens.numel() else 1
    rows = [(seq, first, min(TILE_TOKENS, end - first))
            for seq, (begin, end) in enumerate(itertools.pairwise(starts))
            for first in range(begin, end, TILE_TOKENS)]
    tiles = torch.tensor(rows, dtype=torch.int32).reshape(-1, 3).to(device)
    partition_size = _partition_size(max_seq_len, max(len(rows), 1), device)
    return AttentionPlan(
        num_tokens=starts[-1], tiles=tiles, tile_tokens=max((r[2] for r in rows), default=0),
        block_tables=block_tables.to(torch.int32).contiguous(), seq_lens=seq_lens.to(torch.int32).contiguous(),
        query_start_loc=query_start_loc.to(torch.int32).contiguous(), sliding_window=sliding_window,
        partition_size=partition_size, max_parts=-(-max_seq_len // partition_size))


def _partition_size(max_seq_len: int, num_tiles: int, device: torch.device) -> int:
    """Enough (tile, partition) pairs to cover the GPU twice over (kv heads multiply that further),
    but never fewer than MIN_PARTITION keys per block."""
    wanted_parts = max(1, -(-2 * _num_sms(device) // num_tiles))
    size = -(-max_seq_len // wanted_parts)
    return max(MIN_PARTITION, -(-size // 32) * 32)


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 8  # the CPU emulator: any small number
    return torch.cuda.get_device_properties(device).multi_processor_count


def paged_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: AttentionPlan,
                    scale: float) -> torch.Tensor:
    """Causal attention of a mixed batch over paged KV. Returns [num_tokens, num_q_heads, head_dim]."""
    contract.check_paged_attention(query, k_cache, v_cache, plan.num_tokens)
    _require_contiguous_cache(k_cache, v_cache)
    num_tokens, num_q_heads, head_dim = query.shape
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    out = torch.empty(num_tokens, num_q_heads, head_dim, dtype=query.dtype, device=query.device)
    if num_tokens == 0:
        return out
    if query.stride(2) != 1 or query.stride(1) != head_dim:
        query = query.contiguous()
    dtype = _dtype_name(query.dtype)
    variant = sources.attention_variant(dtype, head_dim, block_size)
    group = num_q_heads // num_kv_heads
    row_chunks = -(-plan.tile_tokens * group // sources.rows_per_block(dtype))
    num_tiles = plan.tiles.shape[0]
    partial_out = partial_max = partial_sum = None
    if plan.max_parts > 1:
        partial_out = torch.empty(num_tokens, num_q_heads, plan.max_parts, head_dim, dtype=torch.float32,
                                  device=query.device)
        partial_max = torch.empty(num_tokens, num_q_heads, plan.max_parts, dtype=torch.float32, device=query.device)
        partial_sum = torch.empty_like(partial_max)
    _launch(variant, "paged_attention", (num_tiles, num_kv_heads * row_chunks, plan.max_parts),
            32 * sources.ATTENTION_WARPS,
            (query, k_cache, v_cache, out, partial_out, partial_max,
             partial_sum, plan.block_tables, plan.seq_lens, plan.query_start_loc,
             plan.tiles, np.int64(query.stride(0)), np.int32(plan.block_tables.stride(0)),
             np.int32(num_q_heads), np.int32(num_kv_heads), np.int32(row_chunks), np.float32(scale),
             np.int32(plan.sliding_window or 0), np.int32(plan.partition_size), np.int32(plan.max_parts)))
    if plan.max_parts > 1:
        _launch(variant, "merge_attention_partitions", (num_tiles, num_q_heads, 1), head_dim,
                (out, partial_out, partial_max, partial_sum, plan.seq_lens,
                 plan.query_start_loc, plan.tiles, np.int32(num_q_heads),
                 np.int32(plan.partition_size), np.int32(plan.max_parts)))
    return out


# --- sampling --------------------------------------------------------------------------------------
def apply_penalties(logits: torch.Tensor, prompt_mask: torch.Tensor, output_counts: torch.Tensor,
                    repetition: torch.Tensor, presence: torch.Tensor, frequency: torch.Tensor) -> torch.Tensor:
    """vLLM/OpenAI penalties on [num_rows, vocab] float32 logits; returns a new tensor."""
    contract.check_apply_penalties(logits, prompt_mask, output_counts, repetition, presence, frequency)
    num_rows, vocab = logits.shape
    out = torch.empty_like(logits, memory_format=torch.contiguous_format)
    if num_rows == 0:
        return out
    f32 = functools.partial(_contiguous, dtype=torch.float32)
    _launch(sources.SAMPLING, "apply_penalties", (-(-vocab // _ELEMENTWISE_THREADS), num_rows, 1), _ELEMENTWISE_THREADS,
            (f32(logits), _contiguous(prompt_mask, torch.bool),
             _contiguous(output_counts, torch.int32), f32(repetition), f32(presence),
             f32(frequency), out, np.int32(vocab)))
    return out


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """Grammar masking as ref.apply_token_bitmask specifies; returns a new tensor."""
    contract.check_apply_token_bitmask(logits, bitmask)
    num_rows, vocab = logits.shape
    out = torch.empty_like(logits, memory_format=torch.contiguous_format)
    if num_rows == 0:
        return out
    _launch(sources.SAMPLING, "apply_token_bitmask", (-(-vocab // _ELEMENTWISE_THREADS), num_rows, 1), _ELEMENTWISE_THREADS,
            (_contiguous(logits, torch.float32), _contiguous(bitmask, torch.int32), out, np.int32(vocab),
             np.int32(bitmask.shape[1])))
    return out


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           min_p: torch.Tensor, seeds: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """One token per row of [num_rows, vocab] float32 logits, drawn exactly as ref.sample
    specifies, without sorting the vocabulary. Returns [num_rows] int64."""
    contract.check_sample(logits, temperature, top_k, top_p, min_p, seeds, offsets)
    num_rows, vocab = logits.shape
    out = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    if num_rows == 0:
        return out
    f32 = functools.partial(_contiguous, dtype=torch.float32)
    i64 = functools.partial(_contiguous, dtype=torch.int64)
    _launch(sources.SAMPLING, "sample_tokens", (num_rows, 1, 1), sources.SAMPLE_THREADS,
            (f32(logits), f32(temperature), i64(top_k), f32(top_p), f32(min_p),
             i64(seeds), i64(offsets), out, np.int32(vocab)))
    return out


def _contiguous(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).contiguous()

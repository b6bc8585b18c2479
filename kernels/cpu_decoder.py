"""Every decoder layer of a decode step in one C call (kernels/csrc/cpu/decoder.c).

The unfused path runs a layer as ~15 torch ops and ctypes calls from Python, 10-40 us each: at
one decode row that is about half of a step of the embedded model. The C decoder strings the same
kernels together (int4_matmul, rms_norm, store_kv, decode_attention) with rotary and SwiGLU in
between, so it computes what the unfused C path computes, call for call. It takes bfloat16 models
whose four projections of every layer are 4-bit in int4_matmul's packing, and pure decode steps.
"""

from __future__ import annotations

import ctypes
import dataclasses

import torch

from kernels import cpu_build

# One layer's tensors, in the order of decoder.c's LAYER_FIELDS (biases may be None).
LAYER_FIELDS = ("input_norm", "post_norm", "qkv_codes", "qkv_params", "qkv_bias", "o_codes", "o_params", "o_bias",
                "gate_up_codes", "gate_up_params", "down_codes", "down_params", "k_cache", "v_cache")
WEIGHT_FIELDS = LAYER_FIELDS[:-2]
STATUS = {-1: "a shape the C kernels do not take", -2: "a buffer could not be allocated",
          -3: "a slot past the KV cache"}


@dataclasses.dataclass(frozen=True)
class DecoderShape:
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    window: int  # 0: no sliding window
    eps: float
    scale: float

    def as_int32(self, block_size: int) -> torch.Tensor:  # decoder.c's SHAPE_FIELDS order
        return torch.tensor([self.hidden, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate,
                             block_size, self.window], dtype=torch.int32)


class CpuDecoder:
    """The layers' tensor addresses, gathered once; `forward` runs a decode step through them."""

    def __init__(self, shape: DecoderShape, layers: list[dict[str, torch.Tensor | None]]) -> None:
        for layer in layers:
            missing = [name for name in WEIGHT_FIELDS if name not in layer]
            if missing:
                raise ValueError(f"C decoder layer lacks {missing}")
        self.shape = shape
        self._shape = shape.as_int32(0)  # the block size comes with the caches (_point_at)
        self._weights = layers  # held: the table below points into them
        self._table = torch.zeros(len(layers), len(LAYER_FIELDS), dtype=torch.int64)  # [L, fields] addresses
        for i, layer in enumerate(layers):
            for j, name in enumerate(WEIGHT_FIELDS):
                tensor = layer[name]
                self._table[i, j] = 0 if tensor is None else tensor.data_ptr()
        self._cache_ids: tuple[int, ...] = ()
        self._num_slots = 0

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot_mapping: torch.Tensor,
                q_rows: torch.Tensor, block_tables: torch.Tensor, ctx_lens: torch.Tensor,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """x [R, hidden] bfloat16 embeddings of R decode rows -> (the last MLP output, the residual
        before it), both [R, hidden]. cos, sin [R, head_dim] bfloat16; slot_mapping [R] int64;
        q_rows [R] int64; block_tables [R, max_blocks] int32; ctx_lens [R] int32."""
        rows = x.shape[0]
        self._point_at(kv_caches)
        x = x.contiguous().clone()  # the kernel writes the layers' outputs into it
        residual = torch.empty_like(x)
        tensors = (cos, sin, slot_mapping, q_rows, block_tables, ctx_lens)
        if any(not t.is_contiguous() for t in tensors) or cos.shape != (rows, self.shape.head_dim):
            raise ValueError("C decoder takes contiguous step tensors and cos/sin [rows, head_dim]")
        status = _DECODER()(
            self._table.data_ptr(), self._table.shape[0], self._shape.data_ptr(), self.shape.eps, self.shape.scale,
            self._num_slots, rows, x.data_ptr(), residual.data_ptr(), cos.data_ptr(), sin.data_ptr(),
            slot_mapping.data_ptr(), q_rows.data_ptr(), block_tables.data_ptr(), block_tables.stride(0),
            ctx_lens.data_ptr())
        if status != 0:
            raise ValueError(f"C decoder: {STATUS.get(status, status)}")
        return x, residual

    def _point_at(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fill the cache columns of the table (again only if the caches were reallocated)."""
        ids = tuple(t.data_ptr() for pair in kv_caches[:1] for t in pair)
        if ids == self._cache_ids:
            return
        if len(kv_caches) != self._table.shape[0]:
            raise ValueError(f"{len(kv_caches)} KV caches for {self._table.shape[0]} layers")
        k_column = LAYER_FIELDS.index("k_cache")
        num_blocks, block_size = kv_caches[0][0].shape[:2]
        expected = (num_blocks, block_size, self.shape.num_kv_heads, self.shape.head_dim)
        for i, pair in enumerate(kv_caches):
            for j, cache in enumerate(pair):
                if cache.dtype != torch.bfloat16 or tuple(cache.shape) != expected or not cache.is_contiguous():
                    raise ValueError(f"C decoder takes contiguous bfloat16 caches {list(expected)}")
                self._table[i, k_column + j] = cache.data_ptr()
        self._shape = self.shape.as_int32(block_size)
        self._num_slots = num_blocks * block_size
        self._cache_ids = ids


_POINTER, _INT, _INT64, _FLOAT = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
# (layers, num_layers, shape, eps, scale, num_slots, rows, x, residual, cos, sin, slots, q_rows, block_tables,
#  table_stride, ctx_lens)
_DECODER = cpu_build.declared("decoder_forward", _POINTER, _INT, _POINTER, _FLOAT, _FLOAT, _INT64, _INT, _POINTER, _POINTER, _POINTER, _POINTER, _POINTER, _POINTER,
                              _POINTER, _INT64, _POINTER)

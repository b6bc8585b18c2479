"""A linear layer whose weight stays 4-bit, as a GGUF file stores it.

torch's CPU int4 kernel (`_weight_int4pack_mm_for_cpu`) multiplies bfloat16 activations by
packed 4-bit codes with one scale and zero point per 32 inputs: value = (code - 8) * scale + zero,
which holds Q4_0, Q4_1 and Q4_K weights without requantizing (the scale and zero are rounded to
bfloat16): 5 bits a weight instead of 16. On a 2-core machine, over the 30 layers of SmolLM2's
shapes, it took 3.7 ms at one row against 14.7 ms for bfloat16 matmuls, 11.5 vs 13.6 ms at 16
rows, but 22.0 vs 18.0 ms at 32 rows: so "mixed" keeps a float copy too and uses it for larger
steps, from a row count measured per shape at start-up (engine/int4_crossover.py). Float32
activations take a slow path (15x), float16 too: bfloat16 only.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.loaders.int4_groups import GROUP_SIZE, Int4Groups

MAX_INT4_TOKENS = 16  # "mixed": steps with more rows use the float copy, until calibrated
AUTO_MIXED_MAX_BYTES = 2 << 30  # "auto" keeps a float copy only while it is this small
PACK_ROWS = 16  # torch's CPU packing works on blocks of 16 output rows


class Int4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, keep_float: bool) -> None:
        super().__init__()
        if in_features % GROUP_SIZE or out_features % PACK_ROWS:
            raise ValueError(f"an int4 weight needs inputs in groups of {GROUP_SIZE} and outputs in "
                             f"blocks of {PACK_ROWS}, got [{out_features}, {in_features}]")
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("packed", torch.empty(out_features, in_features // 2, dtype=torch.uint8))  # [N, K/2]
        self.register_buffer("scales_and_zeros", torch.empty(in_features // GROUP_SIZE, out_features, 2))  # [K/32, N, 2]
        self.weight = nn.Parameter(torch.empty(out_features, in_features)) if keep_float else None  # [N, K]
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self._codes: torch.Tensor | None = None  # [N, K] uint8 while rows arrive, packed once all have
        self.max_int4_rows = MAX_INT4_TOKENS  # with a float copy: the 4-bit path up to this many rows
        self._rows_loaded = 0

    @property
    def complete(self) -> bool:
        return self._rows_loaded == self.out_features

    @torch.no_grad()
    def load_rows(self, first_row: int, groups: Int4Groups) -> None:
        """Fill output rows [first_row, first_row + rows) (a fused layer arrives in parts); the
        codes are packed when the last row is in."""
        rows, cols = groups.shape
        if cols != self.in_features or first_row + rows > self.out_features or self.complete:
            raise ValueError(f"int4 rows [{first_row}, {first_row + rows}) x {cols} do not fit "
                             f"[{self.out_features}, {self.in_features}]")
        if self._codes is None:
            self._codes = torch.zeros(self.out_features, self.in_features, dtype=torch.uint8)
        self._codes[first_row:first_row + rows] = groups.codes
        target = self.scales_and_zeros[:, first_row:first_row + rows]  # [K/32, rows, 2]
        target[..., 0] = groups.scales.t()
        target[..., 1] = groups.zero_points().t()
        if self.weight is not None:
            self.weight[first_row:first_row + rows] = groups.dequantize()
        self._rows_loaded += rows
        if self.complete:
            self.packed.copy_(torch._convert_weight_to_int4pack_for_cpu(self._codes.int(), 1))
            self._codes = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [T, K] bfloat16 -> [T, N]
        if self.weight is not None and x.shape[0] > self.max_int4_rows:
            return self.float_forward(x)
        return self.int4_forward(x)

    def int4_forward(self, x: torch.Tensor) -> torch.Tensor:  # x [T, K] bfloat16 -> [T, N]
        out = torch._weight_int4pack_mm_for_cpu(x.contiguous(), self.packed, GROUP_SIZE, self.scales_and_zeros)
        return out if self.bias is None else out + self.bias

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:  # x [T, K] -> [T, N], the float copy
        return nn.functional.linear(x, self.weight, self.bias)


def resolve_weight_format(choice: str, device: torch.device, dtype: torch.dtype, has_int4: bool,
                          float_bytes: int) -> str:
    """"float", "int4" or "mixed" for `choice` (shared.config.WEIGHT_FORMATS); float_bytes is what
    a float copy of the 4-bit layers would take. An explicit choice that cannot be honoured is a
    ValueError."""
    reason = _int4_unusable(device, dtype, has_int4)
    if choice == "auto":
        return "float" if reason else "mixed" if float_bytes <= AUTO_MIXED_MAX_BYTES else "int4"
    if choice != "float" and reason:
        raise ValueError(f"quantized_weights={choice!r}: {reason}")
    return choice


def _int4_unusable(device: torch.device, dtype: torch.dtype, has_int4: bool) -> str | None:
    """Why 4-bit layers cannot be kept here, or None."""
    if not has_int4:
        return "the checkpoint has no 4-bit matrices (GGUF Q4_0, Q4_1 or Q4_K)"
    if device.type != "cpu" or dtype != torch.bfloat16:
        return f"it runs on the CPU in bfloat16 only (here: {dtype} on {device})"
    if not int4_kernel_available():
        return f"this torch build ({torch.__version__}) has no CPU int4 kernel"
    return None


def int4_kernel_available() -> bool:
    """torch's CPU int4 ops are private (underscored): present in the pinned torch, checked anyway."""
    return all(hasattr(torch.ops.aten, op) for op in ("_weight_int4pack_mm_for_cpu",
                                                       "_convert_weight_to_int4pack_for_cpu"))

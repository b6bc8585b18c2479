"""A linear layer whose weight stays 4-bit, as a GGUF file stores it.

Two kernels multiply bfloat16 activations by 4-bit codes with one scale and min per 32 inputs
(value = code * scale + min, which holds Q4_0, Q4_1 and Q4_K weights without requantizing): 5
bits a weight instead of 16. With the CPU kernels (kernels=cpu), Forge's own C kernel
(kernels/cpu_matmul.py), which multiplies the exact weights by the activations quantized per group
of 32 in two 8-bit terms (integer dot products, at about a bfloat16 rounding), dequantizing
nothing; otherwise torch's
(`_weight_int4pack_mm_for_cpu`, bfloat16 activations, scales and mins rounded to bfloat16), which
turns compute-bound after a few rows. benchmarks/cpu_matmul.py
compares them on the machine at hand. "mixed" keeps a float copy too and uses it for steps with
more rows than the 4-bit path wins at, measured per shape at start-up
(engine/model/int4_crossover.py). Float32 and float16 activations: not taken.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.loaders.int4_groups import GROUP_SIZE, Int4Groups
from kernels import cpu_matmul

MAX_INT4_TOKENS = 16  # "mixed": steps with more rows use the float copy, until calibrated
AUTO_MIXED_MAX_BYTES = 2 << 30  # "auto" keeps a float copy only while it is this small
PACK_ROWS = 16  # both kernels' packings work on blocks of 16 output rows


class Int4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, keep_float: bool, c_kernel: bool) -> None:
        super().__init__()
        if in_features % GROUP_SIZE or out_features % PACK_ROWS:
            raise ValueError(f"an int4 weight needs inputs in groups of {GROUP_SIZE} and outputs in "
                             f"blocks of {PACK_ROWS}, got [{out_features}, {in_features}]")
        self.in_features, self.out_features = in_features, out_features
        self.c_kernel = c_kernel
        groups = in_features // GROUP_SIZE
        if c_kernel:  # see kernels/cpu_matmul.py
            self.register_buffer("packed", torch.empty(out_features // PACK_ROWS, in_features // 8, 4 * PACK_ROWS,
                                                       dtype=torch.uint8))  # [N/16, K/8, 64]
            self.register_buffer("group_params", torch.empty(out_features // PACK_ROWS, groups, 2, PACK_ROWS,
                                                             dtype=torch.int16))  # [N/16, K/32, 2, 16] float16 bits
        else:  # torch's layout; the params are cast with the model (to bfloat16)
            self.register_buffer("packed", torch.empty(out_features, in_features // 2, dtype=torch.uint8))  # [N, K/2]
            self.register_buffer("group_params", torch.empty(groups, out_features, 2))  # [K/32, N, 2] scale, zero
        self.weight = nn.Parameter(torch.empty(out_features, in_features)) if keep_float else None  # [N, K]
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self._staged: Int4Groups | None = None  # rows as they arrive; packed once all have
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
        if self._staged is None:
            groups_shape = (self.out_features, self.in_features // GROUP_SIZE)
            self._staged = Int4Groups(torch.zeros(self.out_features, self.in_features, dtype=torch.uint8),
                                      torch.zeros(groups_shape), torch.zeros(groups_shape))
        self._staged.codes[first_row:first_row + rows] = groups.codes
        self._staged.scales[first_row:first_row + rows] = groups.scales
        self._staged.mins[first_row:first_row + rows] = groups.min_values()
        if self.weight is not None:
            self.weight[first_row:first_row + rows] = groups.dequantize()
        self._rows_loaded += rows
        if self.complete:
            self._pack(self._staged)
            self._staged = None

    def _pack(self, staged: Int4Groups) -> None:
        if self.c_kernel:
            packed, params = cpu_matmul.pack_int4(staged.codes, staged.scales, staged.mins)
            self.packed.copy_(packed)
            self.group_params.copy_(params)
            return
        self.packed.copy_(torch._convert_weight_to_int4pack_for_cpu(staged.codes.int(), 1))
        self.group_params[..., 0] = staged.scales.t()
        self.group_params[..., 1] = staged.zero_points().t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [T, K] bfloat16 -> [T, N]
        if self.weight is not None and x.shape[0] > self.max_int4_rows:
            return self.float_forward(x)
        return self.int4_forward(x)

    def int4_forward(self, x: torch.Tensor) -> torch.Tensor:  # x [T, K] bfloat16 -> [T, N]
        if self.c_kernel:
            return cpu_matmul.int4_matmul(x, self.packed, self.group_params, self.bias)
        out = torch._weight_int4pack_mm_for_cpu(x.contiguous(), self.packed, GROUP_SIZE, self.group_params)
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

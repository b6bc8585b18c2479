"""A weight stored as 4-bit codes in groups of 32 along each row, as GGUF's Q4_0, Q4_1 and Q4_K
store it: what a loader hands over when the model may keep the weight 4-bit."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

GROUP_SIZE = 32  # values per scale: a Q4_0/Q4_1 block, a Q4_K sub-block


@dataclasses.dataclass(frozen=True)
class Int4Groups:
    """value = codes * scales + mins, per group of 32 along a row; `mins` None means the
    symmetric form value = (codes - 8) * scales (Q4_0). Kept as the file's formats compute it,
    so `dequantize` is bit-identical to gguf_dequant.dequantize."""

    codes: torch.Tensor  # [rows, cols] uint8, each 0..15
    scales: torch.Tensor  # [rows, cols / 32] float32
    mins: torch.Tensor | None  # [rows, cols / 32] float32

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self) -> torch.Tensor:
        """[rows, cols] float32."""
        rows, cols = self.shape
        grouped = self.codes.view(rows, cols // GROUP_SIZE, GROUP_SIZE)  # [rows, groups, 32]
        if self.mins is None:
            values = (grouped.to(torch.int8) - 8).float().mul_(self.scales[..., None])
        else:
            values = grouped.float().mul_(self.scales[..., None]).add_(self.mins[..., None])
        return values.view(rows, cols)

    def min_values(self) -> torch.Tensor:
        """[rows, groups] float32 m with value = codes * scales + m (Q4_0: -8 * scales)."""
        return -8 * self.scales if self.mins is None else self.mins

    def zero_points(self) -> torch.Tensor:
        """[rows, groups] float32 z with value = (codes - 8) * scales + z: torch's int4 layout."""
        return torch.zeros_like(self.scales) if self.mins is None else self.mins + 8 * self.scales

    def map_rows(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Int4Groups:
        """The same weight with its rows rearranged by `fn` (applied to codes, scales and mins)."""
        return Int4Groups(fn(self.codes), fn(self.scales), None if self.mins is None else fn(self.mins))

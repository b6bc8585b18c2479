"""Vectorized GGUF dequantization in torch, bit-identical to `gguf.quants.dequantize` (numpy).

Each quantized row is a run of fixed-size blocks; every format below is decoded for all blocks
of a tensor at once. The arithmetic order matches ggml's reference so float32 results agree bitwise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType as QType


def _scale(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 at bytes [start, start+2) of every block, as float32 [num_blocks, 1]."""
    return blocks[:, start:start + 2].contiguous().view(torch.float16).float()


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """[num_blocks, 16] bytes -> [num_blocks, 32]: the low nibbles, then the high nibbles."""
    return torch.cat((packed & 0x0F, packed >> 4), dim=1)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:  # 2-byte scale + 32 int8
    return _scale(blocks, 0) * blocks[:, 2:].contiguous().view(torch.int8).float()


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:  # 2-byte scale + 16 bytes of 4-bit values - 8
    return _scale(blocks, 0) * (_nibbles(blocks[:, 2:]).to(torch.int8) - 8).float()


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:  # scale, minimum, 16 bytes of 4-bit values
    return (_scale(blocks, 0) * _nibbles(blocks[:, 4:]).float()) + _scale(blocks, 2)


# type -> (values per block, bytes per block, decoder of [num_blocks, bytes] uint8)
_BLOCK_FORMATS: dict[QType, tuple[int, int, Callable[[torch.Tensor], torch.Tensor]]] = {
    QType.Q8_0: (32, 34, _q8_0),
    QType.Q4_0: (32, 18, _q4_0),
    QType.Q4_1: (32, 20, _q4_1),
}
_PLAIN_FORMATS = {QType.F32: torch.float32, QType.F16: torch.float16, QType.BF16: torch.bfloat16}
SUPPORTED_TYPES = tuple(sorted((*_PLAIN_FORMATS, *_BLOCK_FORMATS), key=int))


def dequantize(data: np.ndarray, qtype: QType, shape: tuple[int, ...]) -> torch.Tensor:
    """Raw tensor bytes (as the GGUF reader maps them) -> float32 tensor of `shape` (row-major,
    the innermost dimension last). F32/F16/BF16 are returned as stored, without a float32 copy."""
    raw = torch.from_numpy(np.array(data, copy=True).reshape(-1).view(np.uint8))  # [num_bytes] uint8
    if qtype in _PLAIN_FORMATS:
        return raw.view(_PLAIN_FORMATS[qtype]).reshape(shape)
    if qtype not in _BLOCK_FORMATS:
        names = ", ".join(t.name for t in SUPPORTED_TYPES)
        raise ValueError(f"unsupported GGUF quantization {qtype.name}; supported: {names}")
    values_per_block, bytes_per_block, decode = _BLOCK_FORMATS[qtype]
    num_values = int(np.prod(shape))
    if num_values % values_per_block or raw.numel() != num_values // values_per_block * bytes_per_block:
        raise ValueError(f"{qtype.name} tensor of shape {shape} has {raw.numel()} bytes, which does not match")
    return decode(raw.view(-1, bytes_per_block)).reshape(shape)

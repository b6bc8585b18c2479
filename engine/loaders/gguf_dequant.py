"""Vectorized GGUF dequantization in torch, bit-identical to `gguf.quants.dequantize` (numpy).

Each quantized row is a run of fixed-size blocks; every format below is decoded for all blocks
of a tensor at once. The arithmetic order matches ggml's reference so float32 results agree bitwise; the final
multiply-adds run in place on the float output (same operations, no extra full-size buffers).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType as QType

from engine.loaders.int4_groups import Int4Groups


def _scale(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 at bytes [start, start+2) of every block, as float32 [num_blocks, 1]."""
    return blocks[:, start:start + 2].contiguous().view(torch.float16).float()


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """[num_blocks, 16] bytes -> [num_blocks, 32]: the low nibbles, then the high nibbles."""
    return torch.cat((packed & 0x0F, packed >> 4), dim=1)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:  # 2-byte scale + 32 int8
    return blocks[:, 2:].contiguous().view(torch.int8).float().mul_(_scale(blocks, 0))


def _q4_0_groups(blocks: torch.Tensor) -> Int4Groups:  # 2-byte scale + 16 bytes of 4-bit values - 8
    return Int4Groups(_nibbles(blocks[:, 2:]), _scale(blocks, 0), None)


def _q4_1_groups(blocks: torch.Tensor) -> Int4Groups:  # scale, minimum, 16 bytes of 4-bit values
    return Int4Groups(_nibbles(blocks[:, 4:]), _scale(blocks, 0), _scale(blocks, 2))


def _shifted(packed: torch.Tensor, shape: tuple[int, ...], shifts: list[int], mask: int) -> torch.Tensor:
    """`packed` reshaped to `shape` (with a size-1 axis before the last), shifted by each of
    `shifts` along that axis and masked: the bit fields laid out as ggml's reference reads them."""
    shift = torch.tensor(shifts, dtype=torch.uint8).view(1, *([1] * (len(shape) - 2)), len(shifts), 1)
    return (packed.reshape(shape) >> shift) & mask


def _high_bits(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The little-endian uint32 at bytes [start, start+4) as 32 single bits [num_blocks, 32]."""
    return _shifted(blocks[:, start:start + 4], (blocks.shape[0], 4, 1, 1), list(range(8)), 1).reshape(-1, 32)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:  # scale, 32 high bits, 16 bytes of low nibbles
    low = _nibbles(blocks[:, 6:])
    return ((low | (_high_bits(blocks, 2) << 4)).to(torch.int8) - 16).float().mul_(_scale(blocks, 0))


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:  # scale, minimum, 32 high bits, low nibbles
    low = _nibbles(blocks[:, 8:])
    return (low | (_high_bits(blocks, 4) << 4)).float().mul_(_scale(blocks, 0)).add_(_scale(blocks, 2))


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:  # 16 scale/min nibble pairs, 2-bit values, d, dmin
    n = blocks.shape[0]
    scales = blocks[:, :16]
    dl = (_scale(blocks, 80) * (scales & 0xF).float()).reshape(n, 16, 1)
    ml = (_scale(blocks, 82) * (scales >> 4).float()).reshape(n, 16, 1)
    qs = _shifted(blocks[:, 16:80], (n, 2, 1, 32), [0, 2, 4, 6], 3).reshape(n, 16, 16).float()
    return qs.mul_(dl).sub_(ml).reshape(n, 256)


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:  # high-bit mask, 2-bit values, 6-bit scales, d
    n = blocks.shape[0]
    scales = blocks[:, 96:108]
    low = _shifted(scales[:, :8], (n, 1, 8), [0, 4], 0x0F).reshape(n, 16)
    high = _shifted(scales[:, 8:], (n, 1, 4), [0, 2, 4, 6], 0x03).reshape(n, 16)
    dl = (_scale(blocks, 108) * (((low | (high << 4)).to(torch.int8)) - 32).float()).reshape(n, 16, 1)
    ql = _shifted(blocks[:, 32:96], (n, 2, 1, 32), [0, 2, 4, 6], 3).reshape(n, 16, 16)
    qh = _shifted(blocks[:, :32], (n, 1, 1, 32), list(range(8)), 1).reshape(n, 16, 16) ^ 1  # set bit: no offset
    return (ql.to(torch.int8) - (qh << 2).to(torch.int8)).float().mul_(dl).reshape(n, 256)


def _k_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit minimums, [num_blocks, 8] each."""
    parts = packed.reshape(-1, 3, 4)
    d, m, md = parts[:, 0], parts[:, 1], parts[:, 2]
    scales = torch.cat((d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)), dim=-1)
    mins = torch.cat((m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)), dim=-1)
    return scales, mins


def _q4_k_groups(blocks: torch.Tensor) -> Int4Groups:  # d, dmin, packed scales, 4-bit values
    n = blocks.shape[0]
    scales, mins = _k_scales(blocks[:, 4:16])
    d = _scale(blocks, 0) * scales.float()  # [n, 8]
    dm = _scale(blocks, 2) * mins.float()  # [n, 8]; ggml subtracts it, and x - y == x + (-y) exactly
    return Int4Groups(_shifted(blocks[:, 16:], (n, 4, 1, 32), [0, 4], 0x0F).reshape(n, 256), d, -dm)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:  # d, dmin, packed scales, high bits, low nibbles
    n = blocks.shape[0]
    scales, mins = _k_scales(blocks[:, 4:16])
    d = (_scale(blocks, 0) * scales.float()).reshape(n, -1, 1)
    dm = (_scale(blocks, 2) * mins.float()).reshape(n, -1, 1)
    ql = _shifted(blocks[:, 48:], (n, 4, 1, 32), [0, 4], 0x0F).reshape(n, 8, 32)
    qh = _shifted(blocks[:, 16:48], (n, 1, 1, 32), list(range(8)), 1).reshape(n, 8, 32)
    return (ql | (qh << 4)).float().mul_(d).sub_(dm).reshape(n, 256)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:  # low nibbles, 2-bit highs, int8 scales, d
    n = blocks.shape[0]
    d = (_scale(blocks, 208) * blocks[:, 192:208].contiguous().view(torch.int8).float()).reshape(n, 16, 1)
    ql = _shifted(blocks[:, :128], (n, 2, 1, 64), [0, 4], 0x0F).reshape(n, 8, 32)
    qh = _shifted(blocks[:, 128:192], (n, 2, 1, 32), [0, 2, 4, 6], 3).reshape(n, 8, 32)
    q = ((ql | (qh << 4)).to(torch.int8) - 32).reshape(n, 16, 16).float()
    return q.mul_(d).reshape(n, 256)


_INT4_FORMATS: dict[QType, Callable[[torch.Tensor], Int4Groups]] = {
    QType.Q4_0: _q4_0_groups, QType.Q4_1: _q4_1_groups, QType.Q4_K: _q4_k_groups,
}
INT4_TYPES = tuple(_INT4_FORMATS)  # formats that are 4-bit codes with one scale (and min) per 32 values


def _dequantized(groups: Callable[[torch.Tensor], Int4Groups]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda blocks: groups(blocks).dequantize()


# type -> (values per block, bytes per block, decoder of [num_blocks, bytes] uint8)
_BLOCK_FORMATS: dict[QType, tuple[int, int, Callable[[torch.Tensor], torch.Tensor]]] = {
    QType.Q8_0: (32, 34, _q8_0), QType.Q4_0: (32, 18, _dequantized(_q4_0_groups)),
    QType.Q4_1: (32, 20, _dequantized(_q4_1_groups)), QType.Q5_0: (32, 22, _q5_0), QType.Q5_1: (32, 24, _q5_1),
    QType.Q2_K: (256, 84, _q2_k), QType.Q3_K: (256, 110, _q3_k), QType.Q4_K: (256, 144, _dequantized(_q4_k_groups)),
    QType.Q5_K: (256, 176, _q5_k), QType.Q6_K: (256, 210, _q6_k),
}
_PLAIN_FORMATS = {QType.F32: torch.float32, QType.F16: torch.float16, QType.BF16: torch.bfloat16}
SUPPORTED_TYPES = tuple(sorted((*_PLAIN_FORMATS, *_BLOCK_FORMATS), key=int))
BLOCK_TYPES = tuple(_BLOCK_FORMATS)  # quantized formats: 8 bits a value or fewer


def dequantize(data: np.ndarray, qtype: QType, shape: tuple[int, ...]) -> torch.Tensor:
    """Raw tensor bytes (as the GGUF reader maps them) -> float32 tensor of `shape` (row-major,
    the innermost dimension last). F32/F16/BF16 are returned as stored, without a float32 copy."""
    if qtype in _PLAIN_FORMATS:
        return _raw_bytes(data).view(_PLAIN_FORMATS[qtype]).reshape(shape)
    if qtype not in _BLOCK_FORMATS:
        names = ", ".join(t.name for t in SUPPORTED_TYPES)
        raise ValueError(f"unsupported GGUF quantization {qtype.name}; supported: {names}")
    return _BLOCK_FORMATS[qtype][2](_blocks(data, qtype, shape)).reshape(shape)


def int4_groups(data: np.ndarray, qtype: QType, shape: tuple[int, ...]) -> Int4Groups:
    """A 2-D tensor of one of INT4_TYPES as 4-bit codes and per-group scales (and mins), rows kept:
    codes [rows, cols], scales and mins [rows, cols / 32]."""
    if qtype not in _INT4_FORMATS or len(shape) != 2 or shape[1] % _BLOCK_FORMATS[qtype][0]:
        raise ValueError(f"a {qtype.name} tensor of shape {shape} is not rows of 4-bit groups")
    groups = _INT4_FORMATS[qtype](_blocks(data, qtype, shape))
    return groups.map_rows(lambda t: t.reshape(shape[0], -1))


def _raw_bytes(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(data, copy=True).reshape(-1).view(np.uint8))  # [num_bytes] uint8


def _blocks(data: np.ndarray, qtype: QType, shape: tuple[int, ...]) -> torch.Tensor:
    """[num_blocks, bytes per block] uint8, after checking the byte count against `shape`."""
    raw = _raw_bytes(data)
    values_per_block, bytes_per_block, _ = _BLOCK_FORMATS[qtype]
    num_values = int(np.prod(shape))
    if num_values % values_per_block or raw.numel() != num_values // values_per_block * bytes_per_block:
        raise ValueError(f"{qtype.name} tensor of shape {shape} has {raw.numel()} bytes, which does not match")
    return raw.view(-1, bytes_per_block)

"""The CPU's C matmuls: 4-bit weights (kernels/csrc/cpu/int4_matmul.c) with their packed layout and
torch reference; 8-bit weights (kernels/csrc/cpu/int8_matmul.c: the LM head of a checkpoint that
stores it quantized); bfloat16 weights in their own layout (kernels/csrc/cpu/bf16_matmul.c, the LM
head, where torch's matmul streams the weight at a third of the memory bandwidth on few rows).

A 4-bit weight [N, K] is value = code * scale + min per group of 32 inputs. Packed, it is tiles of 16
output rows: codes [N/16, K/8, 64] bytes, eight inputs of all 16 rows per 64 bytes (byte 4i + b: the
low nibble row i input 8s + b, the high nibble row i input 8s + 4 + b), and params [N/16, K/32, 2,
16] float16 bits (each group's 16 scales, then 16 mins): 5 bits a weight. float16 holds the scales
and mins of GGUF's Q4_0 and Q4_1 exactly (they are float16 in the file); Q4_K's products of two
scales are rounded to it. The kernel multiplies the codes by the activations quantized per group of
32 in two 8-bit terms (`quantize_activations`: integer dot products, at about a bfloat16 rounding).
"""

from __future__ import annotations

import ctypes

import torch

from kernels import cpu_build

TILE = 16  # output rows per tile
GROUP = 32  # inputs per scale and min


def pack_int4(codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """codes [N, K] uint8 (0..15), scales and mins [N, K/32] float -> (packed codes [N/16, K/8, 64]
    uint8, params [N/16, K/32, 2, 16] int16 holding float16 bits)."""
    n, k = codes.shape
    if n % TILE or k % GROUP or scales.shape != (n, k // GROUP) or mins.shape != scales.shape:
        raise ValueError(f"int4 weights pack [N, K] codes with N a multiple of {TILE} and K of {GROUP}, and "
                         f"[N, K/{GROUP}] scales and mins; got {tuple(codes.shape)}, {tuple(scales.shape)}, "
                         f"{tuple(mins.shape)}")
    by_byte = codes.view(n // TILE, TILE, k // 8, 2, 4).permute(0, 2, 1, 4, 3)  # [tiles, octets, row, b, nibble]
    packed = (by_byte[..., 0] | (by_byte[..., 1] << 4)).reshape(n // TILE, k // 8, 4 * TILE)  # [tiles, octets, 64]
    params = torch.stack([scales, mins]).to(torch.float16)  # [2, N, K/32]
    if not torch.isfinite(params).all():
        raise ValueError("int4 weights: a scale or min is beyond float16's range; load this model "
                         "with quantized_weights='float'")
    params = params.view(2, n // TILE, TILE, k // GROUP).permute(1, 3, 0, 2)  # [tiles, groups, 2, 16]
    return packed.contiguous(), params.contiguous().view(torch.int16)


def unpack_int4(packed: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The packed weight's (codes [N, K] uint8, scales [N, K/32], mins [N, K/32] float32)."""
    tiles, octets, _ = packed.shape
    nibbles = torch.stack([packed & 0x0F, packed >> 4], dim=-1).view(tiles, octets, TILE, 4, 2)  # [.., row, b, nibble]
    codes = nibbles.permute(0, 2, 1, 4, 3).reshape(tiles * TILE, octets * 8)  # [N, K]
    halves = params.view(torch.float16).float()  # [tiles, groups, 2, 16]
    scales, mins = (halves[:, :, i].permute(0, 2, 1).reshape(tiles * TILE, -1) for i in range(2))  # [N, K/32]
    return codes, scales, mins


def dequantize_int4(packed: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The packed weight as [N, K] float32: code * scale + min (its exact values; a float copy in
    bfloat16 rounds them)."""
    codes, scales, mins = unpack_int4(packed, params)
    return torch.addcmul(mins.repeat_interleave(GROUP, 1), codes.float(), scales.repeat_interleave(GROUP, 1))


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [T, K] -> (high, low [T, K] int8, d [T, K/32], sums [T, K/32]) as the kernel quantizes each
    group of 32 inputs in two 8-bit terms, x ~ d * (high + low / 256): d = largest magnitude / 127,
    high = x * (1 / d) rounded half to even, low = (x - high * d) * (256 / d) rounded (at most 127);
    sums the groups' sums of x. A group of zeros has d = 0 and both terms 0."""
    groups = x.float().view(x.shape[0], -1, GROUP)  # [T, K/32, 32]
    d = groups.abs().amax(-1) / 127  # [T, K/32]
    inverse = torch.where(d > 0, 1 / d, torch.zeros(()))[..., None]
    high = torch.round(groups * inverse)  # [T, K/32, 32]
    rest = (groups.double() - high.double() * d.double()[..., None]).float()  # as the kernel's fused step
    low = torch.round(rest * (inverse * 256)).clamp(max=127)
    return high.to(torch.int8).view(x.shape), low.to(torch.int8).view(x.shape), d, groups.sum(-1)


def reference_int4_matmul(x: torch.Tensor, packed: torch.Tensor, params: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """What `int4_matmul` computes, in torch: [T, K] bfloat16 -> [T, N] bfloat16. The group sums of
    code * (256 * high + low) are exact in float64; the kernel's float32 steps differ from this in
    rare last bits."""
    codes, scales, mins = (t.double() for t in unpack_int4(packed, params))  # [N, K], [N, K/32] twice
    n, groups = codes.shape[0], codes.shape[1] // GROUP
    high, low, d, sums = quantize_activations(x)  # [T, K] twice, [T, K/32] twice
    fine = (256 * high.double() + low.double()).view(-1, groups, GROUP)  # [T, K/32, 32]
    dots = torch.einsum("tgk,ngk->tng", fine, codes.view(n, groups, GROUP))  # [T, N, K/32]
    out = (dots * scales * (d.double() / 256)[:, None] + mins * sums.double()[:, None]).sum(-1)  # [T, N]
    return (out if bias is None else out + bias.double()).float().bfloat16()


def available() -> bool:
    """Whether the C kernels build on this machine (kernels/cpu_build.py) with AVX-512 VNNI and BF16 dot
    products (without them the portable branch is far slower than torch's int4 kernel)."""
    try:
        return bool(cpu_build.library().int4_matmul_vectorized())
    except cpu_build.BuildError:
        return False


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, params: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, K] bfloat16 (rows may be strided) @ the packed weight [N, K], + bias [N] -> [T, N] bfloat16."""
    tiles, octets, _ = packed.shape
    n, k = tiles * TILE, octets * 8
    if (x.dtype != torch.bfloat16 or x.dim() != 2 or x.shape[1] != k or x.stride(1) != 1
            or (bias is not None and (bias.dtype != torch.bfloat16 or bias.shape != (n,) or not bias.is_contiguous()))):
        raise ValueError(f"int4 matmul takes x [T, {k}] bfloat16 with contiguous rows and an optional "
                         f"bfloat16 bias [{n}]; got x {x.dtype} {tuple(x.shape)} strides {x.stride()}")
    out = torch.empty(x.shape[0], n, dtype=torch.bfloat16)  # [T, N]
    status = _INT4_KERNEL()(x.data_ptr(), x.stride(0), x.shape[0], k, packed.data_ptr(), params.data_ptr(),
                       None if bias is None else bias.data_ptr(), n, out.data_ptr(), n)
    if status != 0:
        raise MemoryError("int4 matmul could not allocate its activation terms")
    return out


def bf16_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """x [T, K] bfloat16 (rows may be strided) @ weight [N, K] bfloat16 contiguous -> [T, N]
    bfloat16, as torch's linear computes it (float32 sums, one rounding); None where the C kernel
    does not take it (K not a multiple of 32, a CPU without AVX-512 BF16): use torch then."""
    n, k = weight.shape
    if (x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16 or x.dim() != 2 or x.shape[1] != k
            or x.stride(1) != 1 or not weight.is_contiguous()):
        raise ValueError(f"bf16 matmul takes x [T, {k}] and a contiguous weight [{n}, {k}], both bfloat16; "
                         f"got x {x.dtype} {tuple(x.shape)} strides {x.stride()}, weight {weight.dtype}")
    out = torch.empty(x.shape[0], n, dtype=torch.bfloat16)  # [T, N]
    status = _BF16_KERNEL()(x.data_ptr(), x.stride(0), x.shape[0], k, weight.data_ptr(), n, out.data_ptr(), n)
    return out if status == 0 else None


def pack_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> 8-bit codes with one scale per 32 inputs (scale = the group's largest
    magnitude / 127, as GGUF's Q8_0 quantizes; a Q8_0 weight comes back as it was stored):
    (codes [N/16, K/4, 64] int8, byte 4i + b of quad s row i input 4s + b; params [N/16, K/32, 2,
    16] int16: each group's 16 scales as float16 bits, then the 16 rows' sums of its codes)."""
    n, k = weight.shape
    if n % TILE or k % GROUP:
        raise ValueError(f"int8 weights pack [N, K] with N a multiple of {TILE} and K of {GROUP}, got {(n, k)}")
    groups = weight.float().view(n, k // GROUP, GROUP)  # [N, K/32, 32]
    scales = (groups.abs().amax(-1) / 127).to(torch.float16)  # [N, K/32]
    divisor = torch.where(scales > 0, scales.float(), torch.ones(()))[..., None]
    codes = torch.round(groups / divisor).clamp(-127, 127).to(torch.int8)  # [N, K/32, 32]
    sums = codes.sum(-1, dtype=torch.int16)  # [N, K/32]: at most 127 * 32 in magnitude
    params = torch.stack([scales.view(torch.int16), sums]).view(2, n // TILE, TILE, k // GROUP)
    packed = codes.view(n // TILE, TILE, k // 4, 4).permute(0, 2, 1, 3).reshape(n // TILE, k // 4, 4 * TILE)
    return packed.contiguous(), params.permute(1, 3, 0, 2).contiguous()  # [tiles, K/4, 64], [tiles, groups, 2, 16]


def dequantize_int8(codes: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The packed 8-bit weight as [N, K] float32: code * scale."""
    tiles, quads, _ = codes.shape
    values = codes.view(tiles, quads, TILE, 4).permute(0, 2, 1, 3).reshape(tiles * TILE, quads * 4).float()
    scales = params[:, :, 0].view(torch.float16).float().permute(0, 2, 1).reshape(tiles * TILE, -1)  # [N, K/32]
    return values * scales.repeat_interleave(GROUP, 1)


def int8_matmul(x: torch.Tensor, codes: torch.Tensor, params: torch.Tensor) -> torch.Tensor | None:
    """x [T, K] bfloat16 (rows may be strided) @ the packed 8-bit weight [N, K] -> [T, N] bfloat16
    (the activations in the 4-bit matmul's two 8-bit terms); None on a CPU without AVX-512 VNNI and
    BF16 (use the weight's bfloat16 copy then)."""
    tiles, quads, _ = codes.shape
    n, k = tiles * TILE, quads * 4
    if x.dtype != torch.bfloat16 or x.dim() != 2 or x.shape[1] != k or x.stride(1) != 1:
        raise ValueError(f"int8 matmul takes x [T, {k}] bfloat16 with contiguous rows; got x {x.dtype} "
                         f"{tuple(x.shape)} strides {x.stride()}")
    out = torch.empty(x.shape[0], n, dtype=torch.bfloat16)  # [T, N]
    status = _INT8_KERNEL()(x.data_ptr(), x.stride(0), x.shape[0], k, codes.data_ptr(), params.data_ptr(), n,
                            out.data_ptr(), n)
    if status == -2:
        raise MemoryError("int8 matmul could not allocate its activation terms")
    return out if status == 0 else None


_POINTER, _INT, _INT64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
# (x, x_stride, rows, K, codes, params, bias, N, out, out_stride)
_INT4_KERNEL = cpu_build.declared("int4_matmul", _POINTER, _INT64, _INT, _INT, _POINTER, _POINTER, _POINTER, _INT, _POINTER,
                         _INT64)
# (x, x_stride, rows, K, weight, N, out, out_stride)
_BF16_KERNEL = cpu_build.declared("bf16_matmul", _POINTER, _INT64, _INT, _INT, _POINTER, _INT, _POINTER, _INT64)
# (x, x_stride, rows, K, codes, params, N, out, out_stride)
_INT8_KERNEL = cpu_build.declared("int8_matmul", _POINTER, _INT64, _INT, _INT, _POINTER, _POINTER, _INT, _POINTER,
                                  _INT64)

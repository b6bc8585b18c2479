"""The C 4-bit matmul (kernels/csrc/cpu/int4_matmul.c) against a float64 oracle and its torch
reference, on this machine's build and on a build without AVX-512 (its portable branch)."""

from __future__ import annotations

import ctypes
import pathlib
import shutil
import subprocess

import pytest
import torch

from kernels import cpu_build, int4_weights

pytestmark = pytest.mark.skipif(not int4_weights.available(), reason="the C kernels do not build here")


def _random_weight(n: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    codes = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.uint8)  # [N, K]
    scales = (torch.rand(n, k // 32, generator=generator) * 0.02 + 0.001).half().float()  # [N, K/32], float16 values
    mins = (-torch.rand(n, k // 32, generator=generator) * 0.1).half().float()
    return codes, scales, mins


def _dense(codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """[N, K] float64: code * scale + min."""
    return codes.double() * scales.double().repeat_interleave(32, 1) + mins.double().repeat_interleave(32, 1)


def test_packing_keeps_every_code_scale_and_min():
    generator = torch.Generator().manual_seed(0)
    codes, scales, mins = _random_weight(48, 96, generator)
    packed, params = int4_weights.pack(codes, scales, mins)
    assert packed.shape == (3, 48, 16) and params.shape == (3, 3, 2, 16)
    assert torch.equal(int4_weights.dequantize(packed, params), _dense(codes, scales, mins).float().bfloat16().float())


# rows: 1 and 7 (fewer than a chunk), 16 (one whole chunk), 17 and 40 (a dequantized tile, read per chunk)
@pytest.mark.parametrize("rows", [1, 7, 16, 17, 40])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_matmul_matches_float64_and_its_torch_reference(rows, with_bias):
    generator = torch.Generator().manual_seed(rows)
    codes, scales, mins = _random_weight(64, 160, generator)
    packed, params = int4_weights.pack(codes, scales, mins)
    bias = torch.randn(64, generator=generator).bfloat16() if with_bias else None
    x = torch.randn(rows, 200, generator=generator).bfloat16()[:, :160]  # [rows, 160], rows 200 apart
    got = int4_weights.matmul(x, packed, params, bias)  # [rows, 64]
    weight = _dense(codes, scales, mins).float().bfloat16().double()  # the bfloat16 weights it multiplies
    expected = x.double() @ weight.t() + (0 if bias is None else bias.double())
    assert got.shape == (rows, 64) and got.dtype == torch.bfloat16
    assert (got.double() - expected).abs().max() <= 2 ** -8 * expected.abs().max()  # one bfloat16 rounding
    reference = int4_weights.reference_matmul(x, packed, params, bias)
    assert (got.float() != reference.float()).float().mean() < 0.05  # float32 sums in another order: rare ulps


def test_shapes_it_does_not_take_are_refused_by_name():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="N a multiple of 16"):
        int4_weights.pack(*_random_weight(24, 64, generator))
    packed, params = int4_weights.pack(*_random_weight(16, 64, generator))
    with pytest.raises(ValueError, match=r"x \[T, 64\] bfloat16"):
        int4_weights.matmul(torch.zeros(2, 64), packed, params)  # float32
    with pytest.raises(ValueError, match=r"x \[T, 64\] bfloat16"):
        int4_weights.matmul(torch.zeros(2, 96, dtype=torch.bfloat16), packed, params)
    too_large = torch.full((16, 2), 1e6)
    with pytest.raises(ValueError, match="float16's range"):
        int4_weights.pack(torch.zeros(16, 64, dtype=torch.uint8), too_large, too_large)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_the_portable_branch_computes_the_same(tmp_path: pathlib.Path):
    """The source built for a CPU without AVX-512 BF16 (its one-lane-at-a-time branch)."""
    library = tmp_path / "portable.so"
    source = pathlib.Path(cpu_build.SOURCE_DIR) / "int4_matmul.c"
    subprocess.run(["cc", "-O2", "-march=x86-64-v2", "-fopenmp", "-shared", "-fPIC", "-std=c11", "-Wall", "-Werror",
                    "-o", str(library), str(source)], check=True, capture_output=True, timeout=120)
    portable = ctypes.CDLL(str(library)).int4_matmul
    generator = torch.Generator().manual_seed(1)
    packed, params = int4_weights.pack(*_random_weight(32, 96, generator))
    x = torch.randn(20, 96, generator=generator).bfloat16()  # [20, 96]: a dequantized tile and two chunks
    out = torch.empty(20, 32, dtype=torch.bfloat16)
    status = portable(ctypes.c_void_p(x.data_ptr()), ctypes.c_int64(96), 20, 96, ctypes.c_void_p(packed.data_ptr()),
                      ctypes.c_void_p(params.data_ptr()), None, 32, ctypes.c_void_p(out.data_ptr()), ctypes.c_int64(32))
    assert status == 0
    expected = int4_weights.matmul(x, packed, params)
    assert (out.float() - expected.float()).abs().max() <= 2 ** -7 * expected.float().abs().max()

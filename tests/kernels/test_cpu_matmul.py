"""The C 4-bit matmul (kernels/csrc/cpu/int4_matmul.c) against its torch reference (the same 8-bit
activations, float64 sums) and a float64 oracle of the unquantized product, on this machine's build
and on a build without AVX-512 (its portable branch); the C 8-bit and bfloat16 matmuls against
float64 and torch."""

from __future__ import annotations

import ctypes
import pathlib
import shutil
import subprocess

import pytest
import torch

from kernels import cpu_build, cpu_matmul


def _builds() -> bool:
    try:
        cpu_build.library()
    except cpu_build.BuildError:
        return False
    return True


# Without AVX-512 BF16 the kernels here run their portable branch: slower, the same results
pytestmark = pytest.mark.skipif(not _builds(), reason="the C kernels do not build here")


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
    packed, params = cpu_matmul.pack_int4(codes, scales, mins)
    assert packed.shape == (3, 12, 64) and params.shape == (3, 3, 2, 16)
    assert torch.equal(cpu_matmul.dequantize_int4(packed, params), _dense(codes, scales, mins).float())
    assert packed[1, 2, 4 * 5 + 3] == codes[16 + 5, 8 * 2 + 3] | (codes[16 + 5, 8 * 2 + 4 + 3] << 4)  # the layout


def test_activations_are_quantized_per_group_of_32_in_two_8_bit_terms():
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(0)).bfloat16()  # [3, 96]
    x[1, 32:64] = 0  # a group of zeros
    high, low, d, sums = cpu_matmul.quantize_activations(x)
    assert high.dtype == low.dtype == torch.int8 and high.abs().max() == 127 and d.shape == sums.shape == (3, 3)
    assert d[1, 1] == 0 and not high[1, 32:64].any() and not low[1, 32:64].any()
    groups = x.float().view(3, 3, 32)
    coarse = high.float().view(3, 3, 32) * d[..., None]
    assert ((coarse - groups).abs() <= d[..., None] / 2 * 1.0001).all()  # one term: half a step of d
    both = coarse + low.float().view(3, 3, 32) * d[..., None] / 256
    assert ((both - groups).abs() <= d[..., None] / 512 * 1.01).all()  # two: half a step of d / 256
    assert torch.allclose(sums, groups.sum(-1))


# rows: 1 and 7 (fewer than a chunk), 8 (one whole chunk), 17 and 40 (several chunks, the last partial)
@pytest.mark.parametrize("rows", [1, 7, 8, 17, 40])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_matmul_matches_its_reference_and_float64(rows, with_bias):
    generator = torch.Generator().manual_seed(rows)
    codes, scales, mins = _random_weight(64, 160, generator)
    packed, params = cpu_matmul.pack_int4(codes, scales, mins)
    bias = torch.randn(64, generator=generator).bfloat16() if with_bias else None
    x = torch.randn(rows, 200, generator=generator).bfloat16()[:, :160]  # [rows, 160], rows 200 apart
    got = cpu_matmul.int4_matmul(x, packed, params, bias)  # [rows, 64]
    assert got.shape == (rows, 64) and got.dtype == torch.bfloat16
    reference = cpu_matmul.reference_int4_matmul(x, packed, params, bias)  # the same 8-bit activations
    assert (got.float() - reference.float()).abs().max() <= 2 ** -8 * reference.float().abs().max()
    assert (got.float() != reference.float()).float().mean() < 0.05  # float32 steps: rare last bits
    weight = _dense(codes, scales, mins)  # the exact weights it multiplies
    exact = x.double() @ weight.t() + (0 if bias is None else bias.double())
    # the two-term activations are off by 1/65,000 of a group's largest: the output's bfloat16 rounding remains
    assert (got.double() - exact).abs().max() <= 2 ** -8 * exact.abs().max()


def test_shapes_it_does_not_take_are_refused_by_name():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="N a multiple of 16"):
        cpu_matmul.pack_int4(*_random_weight(24, 64, generator))
    packed, params = cpu_matmul.pack_int4(*_random_weight(16, 64, generator))
    with pytest.raises(ValueError, match=r"x \[T, 64\] bfloat16"):
        cpu_matmul.int4_matmul(torch.zeros(2, 64), packed, params)  # float32
    with pytest.raises(ValueError, match=r"x \[T, 64\] bfloat16"):
        cpu_matmul.int4_matmul(torch.zeros(2, 96, dtype=torch.bfloat16), packed, params)
    too_large = torch.full((16, 2), 1e6)
    with pytest.raises(ValueError, match="float16's range"):
        cpu_matmul.pack_int4(torch.zeros(16, 64, dtype=torch.uint8), too_large, too_large)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_the_portable_branch_computes_the_same(tmp_path: pathlib.Path):
    """The whole library built for a CPU without AVX-512 (cpu_build's flags, another -march): it
    builds, and the 4-bit matmul's one-lane-at-a-time branch computes the same (the same 8-bit
    terms and integer sums; float32 steps in another order)."""
    library = tmp_path / "portable.so"
    sources = sorted(str(p) for p in pathlib.Path(cpu_build.SOURCE_DIR).glob("*.c"))
    flags = [flag if flag != "-march=native" else "-march=x86-64-v2" for flag in cpu_build.FLAGS]
    built = subprocess.run(["cc", *flags, "-o", str(library), *sources, "-lm"], check=False, capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    portable = ctypes.CDLL(str(library)).int4_matmul
    generator = torch.Generator().manual_seed(1)
    packed, params = cpu_matmul.pack_int4(*_random_weight(32, 96, generator))
    x = torch.randn(20, 96, generator=generator).bfloat16()  # [20, 96]: two chunks
    out = torch.empty(20, 32, dtype=torch.bfloat16)
    status = portable(ctypes.c_void_p(x.data_ptr()), ctypes.c_int64(96), 20, 96, ctypes.c_void_p(packed.data_ptr()),
                      ctypes.c_void_p(params.data_ptr()), None, 32, ctypes.c_void_p(out.data_ptr()), ctypes.c_int64(32))
    assert status == 0
    expected = cpu_matmul.int4_matmul(x, packed, params)
    assert (out.float() - expected.float()).abs().max() <= 2 ** -8 * expected.float().abs().max()


@pytest.mark.parametrize("rows", [1, 5, 16, 17, 40])
def test_bf16_matmul_matches_float64_and_torch(rows):
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(200, 96, generator=generator).bfloat16()  # [N, K]: N not a multiple of the 64-row blocks
    x = torch.randn(rows, 128, generator=generator).bfloat16()[:, :96]  # [rows, 96], rows 128 apart
    got = cpu_matmul.bf16_matmul(x, weight)
    if got is None:
        pytest.skip("this CPU has no AVX-512 BF16: torch multiplies")
    expected = x.double() @ weight.double().t()
    assert got.shape == (rows, 200) and got.dtype == torch.bfloat16
    assert (got.double() - expected).abs().max() <= 2 ** -8 * expected.abs().max()
    torch_result = torch.nn.functional.linear(x, weight)
    assert (got.float() != torch_result.float()).float().mean() < 0.05  # float32 sums in another order


def test_bf16_matmul_declines_what_it_does_not_take():
    weight = torch.zeros(16, 48, dtype=torch.bfloat16)
    assert cpu_matmul.bf16_matmul(torch.zeros(2, 48, dtype=torch.bfloat16), weight) is None  # K not a multiple of 32
    with pytest.raises(ValueError, match="both bfloat16"):
        cpu_matmul.bf16_matmul(torch.zeros(2, 48), weight)


def test_the_head_uses_the_c_kernel_up_to_its_calibrated_rows():
    from engine.model import lm_head

    head = torch.nn.Linear(64, 320, bias=False).to(torch.bfloat16)
    model = torch.nn.Module()
    model.lm_head, model.embed_tokens = head, None
    assert lm_head.plain_weight(model) is head.weight
    rows = lm_head.calibrate(head.weight)
    assert rows in (0, *lm_head.ROW_COUNTS)
    model.lm_head = torch.nn.Linear(64, 320, bias=True).to(torch.bfloat16)
    assert lm_head.plain_weight(model) is None  # a bias: torch's linear


def _q8_0_weight(n: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight as GGUF's Q8_0 stores it: codes [N, K] in -127..127, each group's largest magnitude
    127, times a float16 scale [N, K/32]. Returns (codes, scales)."""
    codes = torch.randint(-127, 128, (n, k), generator=generator)
    codes.view(n, k // 32, 32)[..., 0] = 127 * torch.where(torch.rand(n, k // 32, generator=generator) < 0.5, 1, -1)
    scales = (torch.rand(n, k // 32, generator=generator) * 1e-3 + 1e-4).half()
    return codes, scales


def test_int8_packing_gives_a_q8_0_weight_back_as_stored():
    generator = torch.Generator().manual_seed(0)
    codes, scales = _q8_0_weight(32, 96, generator)
    weight = codes.float() * scales.float().repeat_interleave(32, 1)  # [32, 96], what the file dequantizes to
    packed, params = cpu_matmul.pack_int8(weight)
    assert packed.shape == (2, 24, 64) and params.shape == (2, 3, 2, 16)
    assert torch.equal(cpu_matmul.dequantize_int8(packed, params), weight)
    assert packed[1, 5, 4 * 3 + 2] == codes[16 + 3, 4 * 5 + 2]  # the layout
    assert torch.equal(params[:, :, 1].permute(0, 2, 1).reshape(32, 3), codes.view(32, 3, 32).sum(-1).short())
    with pytest.raises(ValueError, match="N a multiple of 16"):
        cpu_matmul.pack_int8(torch.zeros(24, 64))


@pytest.mark.skipif(not cpu_matmul.available(), reason="no AVX-512 VNNI: the caller keeps the bfloat16 head")
@pytest.mark.parametrize("rows", [1, 7, 8, 17, 40])
def test_int8_matmul_matches_float64(rows):
    generator = torch.Generator().manual_seed(rows)
    codes, scales = _q8_0_weight(64, 160, generator)
    weight = codes.double() * scales.double().repeat_interleave(32, 1)  # [64, 160]
    packed, params = cpu_matmul.pack_int8(weight.float())
    x = torch.randn(rows, 200, generator=generator).bfloat16()[:, :160]  # [rows, 160], rows 200 apart
    x[0, :32] = 0  # a group of zeros
    got = cpu_matmul.int8_matmul(x, packed, params)  # [rows, 64]
    expected = x.double() @ weight.t()
    assert got.shape == (rows, 64) and got.dtype == torch.bfloat16
    assert (got.double() - expected).abs().max() <= 2 ** -8 * expected.abs().max()  # one bfloat16 rounding
    with pytest.raises(ValueError, match=r"x \[T, 160\] bfloat16"):
        cpu_matmul.int8_matmul(x.float(), packed, params)

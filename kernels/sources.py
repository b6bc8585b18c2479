"""The CUDA sources under kernels/csrc, their compile-time constant sets, and NVRTC builds.

Every module is compiled for one set of constants (`-D` options). `variants()` lists every set the
engine can ask for, so CI (no GPU) compiles exactly those for each target architecture, through
NVRTC: the bindings CuPy ships run without a GPU, unlike CuPy's own compile cache.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re

CSRC = pathlib.Path(__file__).parent / "csrc"
SCALARS = {"float32": "float", "float16": "f16", "bfloat16": "bf16"}  # torch dtype name -> CUDA type
HEAD_DIMS = (64, 96, 128)  # SmolLM2 / Qwen2.5-0.5B: 64; Phi-3: 96; Llama 3, Mistral: 128
BLOCK_SIZES = (8, 16, 32)  # pages of 32 keys per shared-memory pass must divide evenly
ATTENTION_WARPS = 4  # warps per paged-attention block (NUM_WARPS in paged_attention.cu)
SAMPLE_THREADS = 1024
ARCHITECTURES = ("sm_80", "sm_90")
_INCLUDE = re.compile(r'#include "([\w.]+)"')


@dataclasses.dataclass(frozen=True)
class Variant:
    """One compiled module: a source file and its `-D` constants."""

    source: str
    defines: tuple[tuple[str, str | int], ...]

    def options(self) -> tuple[str, ...]:
        return (*(f"-D{name}={value}" for name, value in self.defines), "--std=c++17")


def covers(dtype: str, head_dim: int, block_size: int) -> bool:
    """Whether a paged-attention kernel exists for this dtype name, head size and page size."""
    return dtype in SCALARS and head_dim in HEAD_DIMS and block_size in BLOCK_SIZES


def attention_variant(dtype: str, head_dim: int, block_size: int) -> Variant:
    if not covers(dtype, head_dim, block_size):
        raise ValueError(f"no CUDA attention kernel for dtype={dtype}, head_dim={head_dim}, "
                         f"block_size={block_size} (have {sorted(SCALARS)}, {HEAD_DIMS}, {BLOCK_SIZES})")
    return Variant("paged_attention.cu", (("SCALAR", SCALARS[dtype]), ("HEAD_DIM", head_dim),
                                          ("BLOCK_SIZE", block_size), ("NUM_WARPS", ATTENTION_WARPS),
                                          ("ROWS_PER_WARP", rows_per_warp(dtype))))


def rows_per_warp(dtype: str) -> int:
    """Query rows per warp: 8 (32 per block); 4 in float32, whose K/V tiles take twice the shared
    memory, to stay under the 48 KiB of static shared memory."""
    return 4 if dtype == "float32" else 8


def rows_per_block(dtype: str) -> int:
    return ATTENTION_WARPS * rows_per_warp(dtype)


STORE_KV = Variant("store_kv.cu", ())
SAMPLING = Variant("sampling.cu", (("SAMPLE_THREADS", SAMPLE_THREADS),))


def variants() -> list[Variant]:
    """Every module the engine may compile."""
    attention = [attention_variant(d, h, b) for d in SCALARS for h in HEAD_DIMS for b in BLOCK_SIZES]
    return [STORE_KV, SAMPLING, *attention]


@functools.cache
def read(source: str) -> str:
    """The source with its local `#include "..."` files spliced in (with #line markers), so that
    the text alone determines the binary: CuPy's compile cache keys on the text and options."""
    lines = []
    for number, line in enumerate((CSRC / source).read_text().splitlines(), start=1):
        included = _INCLUDE.fullmatch(line.strip())
        if included:
            lines += [f'#line 1 "{included[1]}"', read(included[1]), f'#line {number + 1} "{source}"']
        elif line.strip() != "#pragma once":  # spliced into another file, it would only draw a warning
            lines.append(line)
    return "\n".join(lines) + "\n"


def nvrtc_compile(variant: Variant, architecture: str) -> bytes:
    """Compile to a cubin for `architecture` (e.g. "sm_90") with NVRTC; no GPU needed. Raises
    RuntimeError with the compiler log when the source does not build."""
    from cupy_backends.cuda.libs import nvrtc

    program = nvrtc.createProgram(read(variant.source), variant.source, [], [])
    try:
        try:
            nvrtc.compileProgram(program, [f"--gpu-architecture={architecture}", *variant.options()])
        except nvrtc.NVRTCError as error:
            raise RuntimeError(f"{variant.source} {variant.defines} for {architecture}:\n"
                               f"{nvrtc.getProgramLog(program)}") from error
        return nvrtc.getCUBIN(program)
    finally:
        nvrtc.destroyProgram(program)


"""Runs kernels/csrc on the CPU: a kernels.cuda launcher that builds each module with the host C++
compiler against cuda_emulator.h and calls it through ctypes on CPU tensors' pointers."""

from __future__ import annotations

import ctypes
import hashlib
import pathlib
import re
import subprocess
import tempfile
from collections.abc import Sequence

import numpy as np

from kernels import sources

HERE = pathlib.Path(__file__).parent
_KERNEL_NAME = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\([^)]*\)\s*)?(\w+)\(')
_CTYPES = {np.uint64: ctypes.c_uint64, np.int64: ctypes.c_int64, np.int32: ctypes.c_int32,
           np.float32: ctypes.c_float}


class EmulatedLauncher:
    def __init__(self) -> None:
        self._libraries: dict[sources.Variant, ctypes.CDLL] = {}

    def __call__(self, variant: sources.Variant, name: str, grid: tuple[int, int, int], threads: int,
                 args: Sequence[np.generic]) -> None:
        function = getattr(self._library(variant), f"emu_{name}")
        values = [_CTYPES[type(a)](a) for a in args]  # typed exactly as the kernel's parameters
        pointers = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
        function(*(ctypes.c_uint(n) for n in (*grid, threads)), pointers)

    def _library(self, variant: sources.Variant) -> ctypes.CDLL:
        if variant not in self._libraries:
            self._libraries[variant] = ctypes.CDLL(str(_build(variant)))
        return self._libraries[variant]


def _build(variant: sources.Variant) -> pathlib.Path:
    """Compile the module once per content (sources, emulator, constants); cached in the temp dir."""
    code = sources.read(variant.source)
    exports = "".join(f"EMU_EXPORT({name})\n" for name in _KERNEL_NAME.findall(code))
    unit = f'#include "cuda_emulator.h"\n#include "{sources.CSRC / variant.source}"\n{exports}'
    inputs = unit + (HERE / "cuda_emulator.h").read_text() + (sources.CSRC / "common.cuh").read_text() + code
    digest = hashlib.sha256((inputs + repr(variant.defines)).encode()).hexdigest()[:16]
    directory = pathlib.Path(tempfile.gettempdir()) / "forge-emulated-kernels"
    library = directory / f"{variant.source.removesuffix('.cu')}-{digest}.so"
    if not library.exists():
        directory.mkdir(exist_ok=True)
        unit_path = directory / f"{digest}.cpp"
        unit_path.write_text(unit)
        partial = library.with_suffix(".so.partial")
        built = subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-ffp-contract=off", f"-I{HERE}",
                                f"-I{sources.CSRC}", *(f"-D{k}={v}" for k, v in variant.defines), str(unit_path),
                                "-o", str(partial)], capture_output=True, text=True, check=False)
        if built.returncode:
            raise RuntimeError(f"emulated build of {variant.source} {variant.defines} failed:\n{built.stderr}")
        partial.rename(library)  # atomic: a concurrent test run never loads half a library
    return library

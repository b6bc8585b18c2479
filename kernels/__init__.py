"""Forge's device ops. `load(kind, device)` picks one implementation once, at start-up.

`ref` (kernels/ref.py) is plain torch and runs everywhere; it is the spec and the CPU path.
`cuda` (kernels/cuda.py) runs the CUDA kernels of kernels/csrc through CuPy, with the same
functions and signatures. `cpu` (kernels/cpu.py) runs C kernels of kernels/csrc/cpu, built for this
CPU at first use, where they beat the reference (decode attention over the paged cache).
"""

from __future__ import annotations

import logging
import subprocess
import types

import torch

from kernels import sources
from shared.config import KERNEL_KINDS

logger = logging.getLogger("forge.kernels")


def load(kind: str = "auto", device: torch.device | str = "cpu",
         attention: tuple[str, int, int] | None = None) -> types.ModuleType:
    """The ops module for `kind` on `device`: `ref`, `cuda`, `cpu`, or `auto` (cuda when `device`
    is a CUDA device, torch sees a GPU, CuPy imports and the CUDA kernels cover the model's
    `attention` = (dtype name, head_dim, block_size); cpu on a CPU device when the C kernels
    build and cover it; else ref). `cuda` and `cpu` raise where auto would fall back."""
    if kind not in KERNEL_KINDS:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_KINDS)}; got {kind!r}")
    on_gpu = torch.device(device).type == "cuda" and torch.cuda.is_available()
    if kind == "cuda" and not on_gpu:
        raise ValueError(f"kernels=cuda needs a CUDA device that torch can see; got device {device!s}")
    if kind == "cuda" and attention is not None:
        sources.attention_variant(*attention)  # raises, naming what is not covered
    covered = attention is None or sources.covers(*attention)
    if kind == "cuda" or (kind == "auto" and on_gpu and covered and _cupy_imports()):
        from kernels import cuda

        return cuda
    if kind == "cpu" or (kind == "auto" and torch.device(device).type == "cpu"):
        cpu = _cpu_kernels(device, attention, required=kind == "cpu")
        if cpu is not None:
            return cpu
    from kernels import ref

    return ref


def _cpu_kernels(device: torch.device | str, attention: tuple[str, int, int] | None,
                 required: bool) -> types.ModuleType | None:
    """kernels.cpu if it runs here and covers `attention`; else None, or ValueError if `required`."""
    from kernels import cpu, cpu_build

    why = None
    if torch.device(device).type != "cpu":
        why = f"kernels=cpu runs on a CPU device; got device {device!s}"
    elif attention is not None and not cpu.covers(getattr(torch, attention[0]), attention[1], attention[2]):
        why = f"kernels=cpu covers bfloat16 and float32, head_dim a multiple of {cpu.HEAD_DIM_MULTIPLE} up to " \
              f"{cpu.MAX_HEAD_DIM}, block_size <= {cpu.MAX_BLOCK_SIZE}; the model is {attention[0]}, head_dim " \
              f"{attention[1]}, block_size {attention[2]}"
    else:
        try:
            cpu_build.library()
        except (cpu_build.BuildError, OSError, subprocess.SubprocessError) as exc:
            why = str(exc)
    if why is None:
        return cpu
    if required:
        raise ValueError(why)
    logger.warning("CPU kernels unavailable, using the torch reference: %s", why)
    return None


def _cupy_imports() -> bool:
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True

"""Forge's device ops. `load(kind, device)` picks one implementation once, at start-up.

`ref` (kernels/ref.py) is plain torch and runs everywhere; it is the spec and the CPU path.
`cuda` (kernels/cuda.py) runs the CUDA kernels of kernels/csrc through CuPy, with the same
functions and signatures.
"""

from __future__ import annotations

import types

import torch

from kernels import sources
from shared.config import KERNEL_KINDS


def load(kind: str = "auto", device: torch.device | str = "cpu",
         attention: tuple[str, int, int] | None = None) -> types.ModuleType:
    """The ops module for `kind` on `device`: `ref`, `cuda`, or `auto` (cuda when `device` is a
    CUDA device, torch sees a GPU, CuPy imports and the CUDA kernels cover the model's
    `attention` = (dtype name, head_dim, block_size); else ref). `cuda` raises where auto would
    fall back."""
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
    from kernels import ref

    return ref


def _cupy_imports() -> bool:
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True

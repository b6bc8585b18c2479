"""Where the C matmuls (kernels/cpu_matmul.py) beat torch's for the LM head, measured at start-up.

Where the checkpoint stores the head quantized (a GGUF's Q8_0 embedding, say), an 8-bit copy in
int8_matmul's packing multiplies few rows: Q8_0 comes back as stored, and each step streams half
the bytes of the bfloat16 copy (which stays: the embedding lookup and bigger steps use it).

On few rows torch's bfloat16 matmul streams the weight at a fraction of the memory bandwidth (the
head of SmolLM2, 49,152 x 576: 6.1 ms at one row against the C kernel's 1.4 ms on a 2-core AMD
EPYC), while on many it is faster (25.6 against 47.9 ms at 144 rows). Where they cross depends on
the CPU, so both are timed on the model's own head at growing row counts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from engine.stopwatch import best_of
from kernels import cpu_matmul

ROW_COUNTS = (1, 2, 4, 8, 12, 16, 24, 32, 64, 128)  # 128: the default max_num_seqs (rows sampled at once)


def plain_weight(model: nn.Module) -> torch.Tensor | None:
    """The head's bfloat16 weight [vocab, hidden] if it is a plain one (tied to the embedding, or a
    linear layer without bias); None for anything else (4-bit, biased, another dtype)."""
    head = model.lm_head
    if head is None:
        weight = model.embed_tokens.weight
    elif type(head) is nn.Linear and head.bias is None:
        weight = head.weight
    else:
        return None
    return weight if weight.dtype == torch.bfloat16 and weight.is_contiguous() else None


Kernel = Callable[[torch.Tensor], object]  # [rows, hidden] -> logits
Timings = dict[tuple[str, int], float]  # (kernel name, rows) -> seconds, each taken once at start-up


@torch.inference_mode()
def calibrate(weight: torch.Tensor, timings: Timings | None = None) -> int:
    """The largest row count up to which the C kernel was at least as fast as torch's at every
    count (0: never). The times taken stay in `timings`, if given, for int8_rows."""
    if cpu_matmul.bf16_matmul(torch.zeros(1, weight.shape[1], dtype=weight.dtype), weight) is None:
        return 0  # not a shape or CPU the kernel takes
    return _rows_won(weight, ("c", functools.partial(cpu_matmul.bf16_matmul, weight=weight)),
                     [_torch_linear(weight)], {} if timings is None else timings)


def stored_quantized(model: nn.Module, quantized_names: frozenset[str]) -> bool:
    """Whether the checkpoint holds the head (or the embedding it is tied to) at 8 bits or fewer."""
    return ("model.embed_tokens.weight" if model.lm_head is None else "lm_head.weight") in quantized_names


@torch.inference_mode()
def int8_rows(weight: torch.Tensor, c_head_rows: int, timings: Timings | None = None) -> int:
    """The row count up to which an 8-bit copy of the head (cpu_matmul.pack_int8) beats both other
    kernels at every count (their times from calibrate's `timings` where it took them); 0: never."""
    codes, params = cpu_matmul.pack_int8(weight)
    if cpu_matmul.int8_matmul(torch.zeros(1, weight.shape[1], dtype=weight.dtype), codes, params) is None:
        return 0
    c_kernel = ("c", functools.partial(cpu_matmul.bf16_matmul, weight=weight), c_head_rows)
    return _rows_won(weight, ("int8", functools.partial(cpu_matmul.int8_matmul, codes=codes, params=params)),
                     [_torch_linear(weight), c_kernel], {} if timings is None else timings)


def _torch_linear(weight: torch.Tensor) -> tuple[str, Kernel, int]:
    return "torch", functools.partial(nn.functional.linear, weight=weight), ROW_COUNTS[-1]


def _rows_won(weight: torch.Tensor, candidate: tuple[str, Kernel], rivals: list[tuple[str, Kernel, int]],
              timings: Timings) -> int:
    """The largest row count up to which `candidate` (name, kernel) was at least as fast, at every
    count, as each rival (name, kernel, up to how many rows it runs) (0: never)."""
    def seconds(name: str, kernel: Kernel, x: torch.Tensor) -> float:
        if (name, x.shape[0]) not in timings:
            timings[name, x.shape[0]] = best_of(functools.partial(kernel, x))
        return timings[name, x.shape[0]]

    best = 0
    for rows in ROW_COUNTS:
        x = torch.randn(rows, weight.shape[1]).to(weight.dtype)  # [rows, hidden]
        fastest = min(seconds(name, kernel, x) for name, kernel, max_rows in rivals if rows <= max_rows)
        if seconds(*candidate, x) > fastest:
            break
        best = rows
    return best

"""Where the 4-bit kernel beats bfloat16, measured on this machine at start-up ("mixed" weights).

The int4 kernel reads a quarter of the bytes but does other arithmetic per weight, so it may win
at few rows and lose at many; where it stops winning depends on the CPU and the kernel (seen: 16
rows on an AMD EPYC with the bfloat16-dot kernel, fewer on a Xeon with AMX, whose bfloat16 matmuls
are faster; every count up to 512 with the integer kernel on a Xeon without AMX). For each weight shape the
model has, both paths are timed over that shape's layers in turn (enough of them to overflow the
caches, as in a real step), at growing row counts, up to the largest row count at which 4-bit
was faster at every count so far. The model then switches as a whole at the smallest of those:
a step runs either all 4-bit layers or all float copies, each of which is tested against
transformers, never a per-shape mix that no test has seen (one showed a flipped greedy token).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from engine.model.int4_linear import Int4Linear
from engine.stopwatch import best_of

ROW_COUNTS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512)  # 512: the default token budget of a step
STREAM_BYTES = 64 << 20  # time over at least this much float weight per shape: more than any L3
STREAMED_ROWS = 64  # past this many rows both paths are compute-bound: one layer of a shape times them
REPEATS = 3  # best of: the machine is shared and noisy

Timer = Callable[[Sequence[Int4Linear], int, bool], float]  # (layers, rows, use_int4) -> seconds


def calibrate(model: nn.Module, timer: Timer | None = None) -> dict[tuple[int, int], int]:
    """Set `max_int4_rows` on every mixed Int4Linear of `model` to the smallest crossover of its
    shapes; returns the crossover per (out, in) shape, each timed no further than the smallest
    found before it (only the smallest is used: start-up need not time past it)."""
    timer = timer or _time_pass
    by_shape: dict[tuple[int, int], list[Int4Linear]] = defaultdict(list)
    for module in model.modules():
        if isinstance(module, Int4Linear) and module.weight is not None:
            by_shape[(module.out_features, module.in_features)].append(module)
    crossover: dict[tuple[int, int], int] = {}
    for shape, layers in by_shape.items():
        crossover[shape] = _crossover(_streamed_subset(layers), timer, min(crossover.values(), default=ROW_COUNTS[-1]))
    limit(model, min(crossover.values()))
    return crossover


def limit(model: nn.Module, rows: int) -> None:
    """Every mixed Int4Linear of `model` multiplies 4-bit up to `rows` rows, its float copy past that."""
    for module in model.modules():
        if isinstance(module, Int4Linear) and module.weight is not None:
            module.max_int4_rows = rows


def _crossover(layers: Sequence[Int4Linear], timer: Timer, limit: int) -> int:
    """The largest row count, up to `limit`, up to which the 4-bit path was faster at every count
    (0: never)."""
    best = 0
    for rows in (r for r in ROW_COUNTS if r <= limit):
        timed = layers if rows <= STREAMED_ROWS else layers[:1]
        if timer(timed, rows, True) > timer(timed, rows, False):
            break
        best = rows
    return best


def _streamed_subset(layers: list[Int4Linear]) -> list[Int4Linear]:
    """The first layers whose float weights add up to STREAM_BYTES (all, if they do not)."""
    taken, total = [], 0
    for layer in layers:
        taken.append(layer)
        total += layer.weight.numel() * layer.weight.element_size()
        if total >= STREAM_BYTES:
            break
    return taken


@torch.inference_mode()
def _time_pass(layers: Sequence[Int4Linear], rows: int, use_int4: bool) -> float:
    """Best-of-REPEATS seconds for one pass of `rows` bfloat16 rows through every layer."""
    x = torch.randn(rows, layers[0].in_features).to(layers[0].weight.dtype)  # [rows, in]
    run = (lambda layer: layer.int4_forward(x)) if use_int4 else (lambda layer: layer.float_forward(x))
    return best_of(lambda: [run(layer) for layer in layers], REPEATS)

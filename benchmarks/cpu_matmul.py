"""The C matmuls (kernels/cpu_matmul.py) against torch's, same run, over the embedded model's shapes.

    python benchmarks/cpu_matmul.py                  # rows 1 4 8 16 32 64 128
    python benchmarks/cpu_matmul.py --rows 1 16

4-bit layers: one pass over the 120 weight matrices of SmolLM2-135M's 30 layers (q/k/v, o,
gate/up, down; random codes, scales and mins), ms per pass for Forge's C kernel, torch's int4
kernel (`_weight_int4pack_mm_for_cpu`, what `--kernels ref` runs) and bfloat16 matmuls of the
same weights dequantized (the float copy of "mixed"). LM head: the 49,152 x 576 head, ms per call,
the C kernels on its 8-bit (Q8_0) copy and on the bfloat16 weight against torch's linear. Best of 3 passes; all on one thread of torch
work (engine/compute_thread.py), as in the engine.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import compute_thread
from engine.stopwatch import best_of
from kernels import cpu_matmul

LAYER_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (out, in) of one SmolLM2-135M layer
NUM_LAYERS = 30
HEAD_SHAPE = (49152, 576)


def best_ms(run: Callable[[], object]) -> float:
    return 1000 * best_of(run)


def layer_weights(generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    layers = []
    for n, k in LAYER_SHAPES * NUM_LAYERS:
        codes = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.uint8)  # [N, K]
        scales = torch.rand(n, k // 32, generator=generator) * 0.02 + 0.001  # [N, K/32]
        mins = -torch.rand(n, k // 32, generator=generator) * 0.1
        packed, params = cpu_matmul.pack_int4(codes, scales, mins)
        zeros = mins + 8 * scales  # torch's form: (code - 8) * scale + zero
        layers.append({
            "packed": packed, "params": params,
            "torch_packed": torch._convert_weight_to_int4pack_for_cpu(codes.int(), 1),
            "torch_params": torch.stack([scales.t(), zeros.t()], dim=-1).bfloat16(),  # [K/32, N, 2]
            "float": cpu_matmul.dequantize_int4(packed, params).bfloat16(),  # [N, K]
        })
    return layers


def run(rows_list: list[int]) -> None:
    layers = layer_weights(torch.Generator().manual_seed(0))
    head = torch.randn(*HEAD_SHAPE).bfloat16()  # [vocab, hidden]
    head_int8 = cpu_matmul.pack_int8(head)  # (codes, params): its Q8_0 copy
    print("| rows | 4-bit layers: C | torch int4 | bfloat16 matmuls | LM head: C 8-bit | C bfloat16 | torch |")
    print("|---|---|---|---|---|---|---|")
    for rows in rows_list:
        x = {k: torch.randn(rows, k).bfloat16() for k in {k for _, k in LAYER_SHAPES}}  # [rows, K]
        c = best_ms(lambda x=x: [cpu_matmul.int4_matmul(x[w["float"].shape[1]], w["packed"], w["params"]) for w in layers])
        t = best_ms(lambda x=x: [torch._weight_int4pack_mm_for_cpu(x[w["float"].shape[1]], w["torch_packed"], 32,
                                                               w["torch_params"]) for w in layers])
        f = best_ms(lambda x=x: [torch.nn.functional.linear(x[w["float"].shape[1]], w["float"]) for w in layers])
        h_in = torch.randn(rows, HEAD_SHAPE[1]).bfloat16()
        head_8 = best_ms(lambda h_in=h_in: cpu_matmul.int8_matmul(h_in, *head_int8))
        head_c = best_ms(lambda h_in=h_in: cpu_matmul.bf16_matmul(h_in, head))
        head_t = best_ms(lambda h_in=h_in: torch.nn.functional.linear(h_in, head))
        print(f"| {rows} | {c:.1f} | {t:.1f} | {f:.1f} | {head_8:.2f} | {head_c:.2f} | {head_t:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64, 128])
    args = parser.parse_args()
    if not cpu_matmul.available():
        sys.exit("the C matmuls do not build here with AVX-512 VNNI and BF16 (kernels/cpu_build.py)")
    compute_thread.run(run, args.rows)


if __name__ == "__main__":
    main()

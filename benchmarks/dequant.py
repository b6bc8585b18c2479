"""GGUF dequantization speed: Forge's vectorized torch decoders vs `gguf.quants.dequantize` (numpy).

    python benchmarks/dequant.py            # a ~100 MB set of quantized tensors, every supported block type

Both decode the same random blocks (finite scales) to float32 in the same run; the results are
checked equal before timing.
"""

from __future__ import annotations

import functools
import os
import sys
import time

import gguf
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.loaders import gguf_dequant
from tests.model.gguf_blocks import finite_scales

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
TOTAL_BYTES = 100 * 2**20


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    print(f"# {TOTAL_BYTES / 2**20:.0f} MB of quantized blocks over {len(TYPES)} types; "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, numpy {np.__version__}")
    print("| type | MB | gguf (numpy) s | Forge (torch) s | speed-up |")
    print("|---|---|---|---|---|")
    total_ref = total_ours = 0.0
    for name in TYPES:
        qtype = gguf.GGMLQuantizationType[name]
        values, size = gguf.GGML_QUANT_SIZES[qtype]
        num_blocks = TOTAL_BYTES // len(TYPES) // size
        blocks = np.random.default_rng(0).integers(0, 256, size=(num_blocks, size), dtype=np.uint8)
        blocks = finite_scales(blocks, qtype) if name in ("Q5_0", "Q5_1") or name.endswith("_K") else blocks
        if name in ("Q4_0", "Q4_1", "Q8_0"):
            blocks = gguf.quants.quantize(np.random.default_rng(1).standard_normal(
                (num_blocks, values)).astype(np.float32), qtype).reshape(num_blocks, size)
        shape = (num_blocks, values)
        reference = torch.from_numpy(gguf.quants.dequantize(blocks, qtype).copy()).reshape(shape)
        assert torch.equal(gguf_dequant.dequantize(blocks, qtype, shape), reference), name
        ref_s = best_of(functools.partial(gguf.quants.dequantize, blocks, qtype))
        ours_s = best_of(functools.partial(gguf_dequant.dequantize, blocks, qtype, shape))
        total_ref, total_ours = total_ref + ref_s, total_ours + ours_s
        print(f"| {name} | {blocks.nbytes / 2**20:.1f} | {ref_s:.3f} | {ours_s:.3f} | {ref_s / ours_s:.1f}x |")
    print(f"| all | {TOTAL_BYTES / 2**20:.0f} | {total_ref:.3f} | {total_ours:.3f} | {total_ref / total_ours:.1f}x |")


if __name__ == "__main__":
    main()

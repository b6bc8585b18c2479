"""Random GGUF quantized blocks for tests and benchmarks: any bytes make a block, once the
float16 scales are made finite."""

from __future__ import annotations

import numpy as np

SCALE_OFFSETS = {"Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
                 "Q5_0": [0], "Q5_1": [0, 2]}  # byte offsets of each float16 scale in a block


def finite_scales(blocks: np.ndarray, qtype) -> np.ndarray:
    """`blocks` [num_blocks, bytes per block] of `qtype` with every float16 scale set to a small
    finite value."""
    blocks = blocks.copy()
    for offset in SCALE_OFFSETS[qtype.name]:
        scales = np.random.default_rng(offset).uniform(-0.05, 0.05, blocks.shape[0]).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks

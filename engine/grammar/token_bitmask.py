"""Each constrained row's allowed tokens for one sampling step, as llguidance computes them."""

from __future__ import annotations

import functools

import llguidance
import llguidance.numpy
import numpy as np
import torch


def allowed_tokens(matchers: list[llguidance.LLMatcher], vocab_size: int) -> torch.Tensor:
    """-> int32 [len(matchers), ceil(vocab_size / 32)]: bit t % 32 of word t // 32 set when token t
    may come next (the layout kernels' apply_token_bitmask reads). Rows are filled in parallel
    outside the GIL."""
    bitmask = np.full((len(matchers), -(-vocab_size // 32)), -1, dtype=np.int32)
    llguidance.numpy.fill_next_token_bitmask_par(_executor(), list(zip(matchers, range(len(matchers)))), bitmask)
    return torch.from_numpy(bitmask)


@functools.cache
def _executor() -> llguidance.LLExecutor:
    return llguidance.LLExecutor()

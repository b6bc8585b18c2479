"""Each constrained row's allowed tokens for one sampling step, as llguidance computes them."""

from __future__ import annotations

import functools

import llguidance
import llguidance.numpy
import numpy as np
import torch


def allowed_tokens(matchers: list[llguidance.LLMatcher], vocab_size: int, parallel: bool) -> torch.Tensor:
    """-> int32 [len(matchers), ceil(vocab_size / 32)]: bit t % 32 of word t // 32 set when token t
    may come next (the layout kernels' apply_token_bitmask reads). `parallel`: rows filled by
    llguidance's thread pool; only worth it where the cores are free while the model runs (a GPU):
    on a CPU the model's OpenMP threads hold them, and handing 16 rows to the pool cost 0.2-4 ms
    against 0.15 ms filling them here, one after the other."""
    bitmask = np.full((len(matchers), -(-vocab_size // 32)), -1, dtype=np.int32)
    if parallel:
        llguidance.numpy.fill_next_token_bitmask_par(_executor(), list(zip(matchers, range(len(matchers)))), bitmask)
    else:
        for row, matcher in enumerate(matchers):
            llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, row)
    return torch.from_numpy(bitmask)


@functools.cache
def _executor() -> llguidance.LLExecutor:
    return llguidance.LLExecutor()

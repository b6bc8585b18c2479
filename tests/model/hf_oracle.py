"""Greedy decoding with transformers, recording how decisive each step was."""

from __future__ import annotations

import inspect

import torch


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], num_tokens: int, step_logprobs: list | None = None
              ) -> tuple[list[int], list[float]]:
    """(tokens, margins): the greedy continuation, ignoring EOS, and at each step the gap between
    the top-2 logits (a gap under ~1e-3 is a tie that float rounding may break either way).
    With `step_logprobs`, each step's full log-softmax [vocab] is appended to it."""
    input_ids = torch.tensor([prompt_ids])
    # transformers renamed `past_key_values` to `cache` (5.x); accept either.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    past = None
    tokens, margins = [], []
    for _ in range(num_tokens):
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{cache_arg: past})  # the last position's
        logits = out.logits[0, -1].float()
        if step_logprobs is not None:
            step_logprobs.append(logits.log_softmax(-1))
        top2 = logits.topk(2).values
        margins.append(float(top2[0] - top2[1]))
        token = int(logits.argmax())
        tokens.append(token)
        past = getattr(out, cache_arg)
        input_ids = torch.tensor([[token]])
    return tokens, margins


def compare_until_tie(forge_ids: list[int], hf_ids: list[int], margins: list[float],
                      tie: float = 1e-3) -> int:
    """How many leading tokens must agree: all of them, or up to the first step where
    transformers itself faced a tie."""
    for step, margin in enumerate(margins):
        if margin < tie:
            return step
    return len(hf_ids)

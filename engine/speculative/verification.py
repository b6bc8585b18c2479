"""Greedy verification of a draft: what the model itself would have produced, token for token."""

from __future__ import annotations


def accepted_tokens(draft_ids: list[int], target_ids: list[int]) -> list[int]:
    """`target_ids[i]` is the model's token after the known tokens and draft_ids[:i]
    (len(draft_ids) + 1 of them). The draft is kept while it equals the model's choice; the model's
    token at the first disagreement (or after a fully accepted draft) follows, so the result is
    never empty and is exactly what decoding one token a step would give."""
    accepted = 0
    while accepted < len(draft_ids) and draft_ids[accepted] == target_ids[accepted]:
        accepted += 1
    return target_ids[:accepted + 1]

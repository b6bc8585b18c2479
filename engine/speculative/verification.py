"""Verification of a draft: what the model itself would have produced, token for token.

Greedy rows take the argmax. Sampled rows need no rejection sampling: Forge's sampler is an
exponential race whose noise is a hash of (seed, output position, token id) (kernels/ref.py:
sample), so the token a request draws at output position j is a function of the logits there, its
seed and j alone. The runner draws each draft position with its own position's noise; where the
draft agrees with that draw, the prefix is the one decoding without drafts would have produced, so
a drafted request draws exactly the tokens (and so the distribution) of an undrafted one. A
deterministic draft token d is then accepted with probability p(d), as rejection sampling with a
one-hot proposal would accept it.
"""

from __future__ import annotations


def accepted_tokens(draft_ids: list[int], target_ids: list[int]) -> list[int]:
    """`target_ids[i]` is the model's token (argmax or seeded draw) after the known tokens and
    draft_ids[:i] (len(draft_ids) + 1 of them). The draft is kept while it equals the model's choice; the model's
    token at the first disagreement (or after a fully accepted draft) follows, so the result is
    never empty and is exactly what decoding one token a step would give."""
    accepted = 0
    while accepted < len(draft_ids) and draft_ids[accepted] == target_ids[accepted]:
        accepted += 1
    return target_ids[:accepted + 1]

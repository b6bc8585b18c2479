"""Prompt lookup (vLLM's "ngram" method): the draft is what followed the latest earlier occurrence of
the sequence's own last n tokens, searched over the prompt and the output so far, for the longest n
from prompt_lookup_max down to prompt_lookup_min. Pure Python.

Each request keeps an index (token -> positions) that grows with its tokens, so a proposal looks at
the few places the last token occurred instead of scanning the whole sequence every step.
"""

from __future__ import annotations

MAX_CANDIDATES = 64  # latest occurrences of the last token examined a step: bounds a proposal's cost


class TokenIndex:
    """Positions of each token in a growing sequence (tokens are only ever appended)."""

    __slots__ = ("num_indexed", "positions")

    def __init__(self) -> None:
        self.positions: dict[int, list[int]] = {}
        self.num_indexed = 0

    def catch_up(self, token_ids: list[int]) -> None:
        positions = self.positions
        for position in range(self.num_indexed, len(token_ids)):
            positions.setdefault(token_ids[position], []).append(position)
        self.num_indexed = len(token_ids)


def propose(token_ids: list[int], index: TokenIndex, num_tokens: int, min_n: int, max_n: int) -> list[int]:
    """Up to `num_tokens` draft tokens continuing `token_ids` ([] when no n-gram of at least `min_n`
    tokens recurs). Among the occurrences of the longest matching suffix, the latest wins."""
    index.catch_up(token_ids)
    last = len(token_ids) - 1
    best_length, best_end = 0, -1
    earlier = index.positions.get(token_ids[last], ())
    for count, end in enumerate(reversed(earlier)):  # end: an occurrence of the last token
        if end == last:
            continue
        if count > MAX_CANDIDATES:
            break
        length = match_length(token_ids, end, token_ids, last, max_n)
        if length > best_length:
            best_length, best_end = length, end
            if length == max_n:
                break
    if best_length < min_n:
        return []
    return token_ids[best_end + 1:best_end + 1 + num_tokens]


def match_length(earlier: list[int], end: int, sequence: list[int], last: int, max_n: int) -> int:
    """How many tokens (at most max_n) ending at earlier[end] equal those ending at sequence[last],
    given that those two are equal (an index found them)."""
    length = 1
    while (length < max_n and end - length >= 0 and last - length >= 0
           and earlier[end - length] == sequence[last - length]):
        length += 1
    return length

"""The outputs of recent requests, for the "suffix" method: an agent loop, a retry or a template
asks the model for what it answered before, and a request whose own text has no earlier match can
still be drafted from another's. Pure Python, bounded: the `capacity` latest finished outputs.

Every position of every kept output is indexed by the `key_len` tokens ending there; a lookup
takes the positions whose key equals the sequence's last `key_len` tokens and extends each match
backwards, up to `max_n` tokens. The longest match wins; among equals, the latest output.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from engine.speculative.ngram_proposer import match_length

MAX_CANDIDATES = 64  # matches examined a lookup, latest first: bounds its cost


class OutputCache:
    def __init__(self, capacity: int, key_len: int, max_n: int) -> None:
        self.capacity = capacity
        self.key_len = key_len
        self.max_n = max_n
        self.outputs: OrderedDict[int, list[int]] = OrderedDict()  # id -> tokens, oldest first
        # last key_len tokens -> (id, end) of each position they end at, in the order added (so the
        # oldest output's entries lead every queue, and forgetting it pops from the front)
        self.index: dict[tuple[int, ...], deque[tuple[int, int]]] = {}
        self.next_id = 0

    def add(self, tokens: list[int]) -> None:
        """Keep `tokens` (a finished request's output), forgetting the oldest past capacity."""
        if len(tokens) <= self.key_len:
            return
        output_id, self.next_id = self.next_id, self.next_id + 1
        self.outputs[output_id] = tokens
        for end in range(self.key_len - 1, len(tokens) - 1):  # an end with a token after it
            self.index.setdefault(tuple(tokens[end - self.key_len + 1:end + 1]), deque()).append((output_id, end))
        while len(self.outputs) > self.capacity:
            self._forget(*self.outputs.popitem(last=False))

    def propose(self, token_ids: list[int], num_tokens: int) -> list[int]:
        """Up to `num_tokens` tokens that followed the longest match of the end of `token_ids` in a
        kept output ([] when none matches `key_len` tokens)."""
        if len(token_ids) < self.key_len:
            return []
        candidates = self.index.get(tuple(token_ids[-self.key_len:]), ())
        best_length, best = 0, None
        for count, (output_id, end) in enumerate(reversed(candidates)):
            if count >= MAX_CANDIDATES:
                break
            tokens = self.outputs[output_id]
            length = match_length(tokens, end, token_ids, len(token_ids) - 1, self.max_n)
            if length > best_length:
                best_length, best = length, (tokens, end)
                if length == self.max_n:
                    break
        if best is None:
            return []
        tokens, end = best
        return tokens[end + 1:end + 1 + num_tokens]

    def _forget(self, output_id: int, tokens: list[int]) -> None:
        for end in range(self.key_len - 1, len(tokens) - 1):
            key = tuple(tokens[end - self.key_len + 1:end + 1])
            entries = self.index.get(key)
            while entries and entries[0][0] == output_id:
                entries.popleft()
            if entries is not None and not entries:
                del self.index[key]

"""Incremental detokenization: text deltas from token ids, one id at a time, UTF-8 split safe,
without re-decoding the history (tokenizers' DecodeStream keeps only a short tail)."""

from __future__ import annotations

from tokenizers.decoders import DecodeStream

from shared.text.tokenizer import Tokenizer


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.backend = tokenizer.backend
        self.stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def push(self, token_ids: list[int]) -> str:
        """The text these new ids complete (may be empty while a character is still split)."""
        pieces = []
        for token_id in token_ids:
            piece = self.stream.step(self.backend, token_id)
            if piece:
                pieces.append(piece)
        return "".join(pieces)

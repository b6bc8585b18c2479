"""One request's output text: incremental detokenization plus stop strings. Pure: no sockets.

Text is held back by `max(len(stop)) - 1` characters so that a stop string is never partly
emitted; when one appears, everything before it is released and the rest is dropped.
"""

from __future__ import annotations

from shared.text.detokenizer import IncrementalDetokenizer
from shared.text.tokenizer import Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: list[str]) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.stop = [s for s in stop if s]
        self.hold_back = max((len(s) for s in self.stop), default=1) - 1
        self.pending = ""  # decoded but not yet released
        self.stopped = False

    def push(self, token_ids: list[int]) -> str:
        """Text now safe to release. After a stop string matched, always ""."""
        if self.stopped:
            return ""
        self.pending += self.detokenizer.push(token_ids)
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            released, self.pending = self.pending[:cut], ""
            return released
        keep = min(self.hold_back, len(self.pending))
        released = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return released

    def push_until_stop(self, token_ids: list[int]) -> tuple[str, int]:
        """push, one token at a time when several could hold a stop string's end (a step that
        verified draft tokens): the text and how many of the tokens came before the stop, so that
        tokens generated past it are not counted."""
        if len(token_ids) == 1 or not self.stop:
            return self.push(token_ids), len(token_ids)
        text = ""
        for count, token_id in enumerate(token_ids, 1):
            text += self.push([token_id])
            if self.stopped:
                return text, count
        return text, len(token_ids)

    def finish(self) -> str:
        """The held-back tail, once the request has ended without a stop string."""
        released, self.pending = ("" if self.stopped else self.pending), ""
        return released

    def _first_stop(self) -> int | None:
        found = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

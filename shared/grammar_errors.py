"""llguidance's error messages can carry the whole grammar and parser state (megabytes for a big
grammar): what Forge reports and logs is the first line, cut short."""

from __future__ import annotations

MAX_CHARS = 300


def brief(message: str) -> str:
    first = message.strip().split("\n", 1)[0]
    return first if len(first) <= MAX_CHARS else first[:MAX_CHARS] + "..."

"""One streamed choice of a request with tools: content goes out as it comes, calls at the end.

The stream holds back whatever may still turn out to be a call (from the format's marker on, and
a tail that could begin one), then at the end parses the whole text with the very parser a
non-streamed request uses. So a stream delivers exactly the content and calls the same output
returned whole would: arguments never arrive split, dropped or twice.
"""

from __future__ import annotations

from shared.text.tool_call_format import FunctionCall, ToolCallFormat


class ToolCallStream:
    def __init__(self, parser: ToolCallFormat) -> None:
        self.parser = parser
        self.text = ""
        self.num_sent = 0  # characters of content already sent: always a prefix of the final content

    def feed(self, delta: str) -> str:
        """Take the next piece of text; returns the content that can go out now."""
        self.text += delta
        end = self._settled_end()
        if end <= self.num_sent:
            return ""
        out, self.num_sent = self.text[self.num_sent:end], end
        return out

    def finish(self) -> tuple[str, list[FunctionCall]]:
        """At the end of the output: (the content not sent yet, the calls)."""
        parsed = self.parser.parse(self.text)
        return (parsed.content or "")[self.num_sent:], parsed.calls

    def _settled_end(self) -> int:
        """How much of the text is content whatever comes next."""
        text = self.text
        start = self.parser.call_start(text)
        if start is None:
            start = len(text) - _partial_marker(text, self.parser.marker) if self.parser.anywhere else len(text)
            if not self.parser.anywhere and not text.strip():
                start = 0  # the first character that is not whitespace decides
        return start if text[:start].strip() else 0  # whitespace alone may be no content at all


def _partial_marker(text: str, marker: str) -> int:
    """The length of the longest tail of `text` that begins `marker`."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0

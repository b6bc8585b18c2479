"""The incremental tool-call parser: an output's text, fed in pieces of any size, split into content
and call deltas: a call's name first (with its index), then its arguments' JSON text in fragments
as the model writes them. A whole output is parsed by feeding it at once, so the deltas a stream
sends, concatenated, are exactly the calls the same output returned whole has.

Calls are JSON objects ({"name": ..., "arguments" or "parameters": {...}}) placed as the format
says (shared/text/tool_call_format.py): after a marker, one after another, or in an array. The
arguments are the raw JSON text the model wrote (valid JSON: a grammar forced it, or the model
wrote it so), never re-serialized, which is what lets them stream. Text that holds no call with a
name is content, sent when it can no longer begin a call.
"""

from __future__ import annotations

import dataclasses
import json

from shared.text.tool_call_format import ToolCallFormat

_ARGUMENT_KEYS = ("arguments", "parameters")
_SEPARATORS = " \t\r\n;,[]"  # between calls: whitespace, Llama's "; ", a JSON array's punctuation
_MISTRAL_MARKER = "[TOOL_CALLS]"  # a special token the detokenizer drops, where the tokenizer marks it so


@dataclasses.dataclass(frozen=True)
class CallDelta:
    index: int
    name: str = ""  # in a call's first delta only
    arguments: str = ""  # the next fragment of its arguments' JSON text


@dataclasses.dataclass
class _Call:
    """The call object being scanned: where its top-level key and value are, what is known."""

    depth: int = 0  # nesting inside the object ({ and [ outside strings)
    in_string: bool = False
    escaped: bool = False
    key_start: int = -1  # the opening quote of the top-level key being read
    key: object = None  # the key whose value is being read (None: expecting a key)
    value_start: int = -1
    name: str | None = None
    index: int = -1  # set when the name goes out
    arguments: tuple[int, int] | None = None  # where the arguments value starts and (once known) ends
    arguments_sent: int = 0  # characters of the arguments sent


class ToolCallParser:
    def __init__(self, tool_format: ToolCallFormat) -> None:
        self.format = tool_format
        self.text = ""
        self.scanned = 0  # characters of the calls region looked at
        self.calls_start: int | None = None  # where the calls begin (None: not seen yet)
        self.searched = 0  # the marker was looked for up to here (each piece is searched once)
        self.content_sent = 0
        self.call: _Call | None = None  # the object being scanned
        self.expects_call = True  # Hermes: inside a <tool_call> block, its object not yet begun
        self.stopped = False  # something that is no call came between calls: nothing more is looked for
        self.num_calls = 0  # calls whose name went out

    def feed(self, piece: str) -> tuple[str, list[CallDelta]]:
        """The content and call deltas that `piece` settles."""
        self.text += piece
        if self.calls_start is None:
            self.calls_start = self._calls_start()
            if self.calls_start is None:
                return self._content_until(self._content_end()), []
            self.scanned = self.calls_start + (len(self.format.marker) if self.format.anywhere else 0)
        return self._content_until(self.calls_start), self._scan()

    def _calls_start(self) -> int | None:
        """Where the calls begin, or None if they do not (yet): the format's marker, anywhere for
        Hermes, else as the first character that is not blank."""
        text, marker = self.text, self.format.marker
        if self.format.anywhere:
            index = text.find(marker, self.searched)
            self.searched = max(0, len(text) - len(marker) + 1)
            return None if index < 0 else index
        if self.searched < 0:  # decided: content
            return None
        stripped = text.lstrip()
        if not stripped:
            return None
        if stripped.startswith(marker):
            return len(text) - len(stripped)
        self.searched = -1
        return None

    def finish(self) -> tuple[str, list[CallDelta]]:
        """At the end of the output: what is left. With no call named, all of it is content."""
        end = len(self.text) if self.calls_start is None or self.num_calls == 0 else self.calls_start
        return self._content_until(end), []

    # --- content ---------------------------------------------------------------------------------
    def _content_end(self) -> int:
        """How much text is content whatever comes next (no call has begun)."""
        if not self.format.anywhere:
            return len(self.text)  # the first non-blank character decided: not a call
        return len(self.text) - _partial(self.text, self.format.marker)

    def _content_until(self, end: int) -> str:
        """Content up to `end` not sent yet. Blank content waits (it may turn out to be none at
        all, or the blank before a call), and at the end blank content is none."""
        if end <= self.content_sent or (not self.content_sent and not self.text[:end].strip()):
            return ""
        out, self.content_sent = self.text[self.content_sent:end], end
        return out

    # --- calls -----------------------------------------------------------------------------------
    def _scan(self) -> list[CallDelta]:
        deltas: list[CallDelta] = []
        while self.scanned < len(self.text) and not self.stopped:
            if self.call is not None:
                self._in_call(self.scanned, deltas)
                self.scanned += 1
            elif not self._between_calls():
                break  # the text so far could still begin what comes between calls: wait for more
        if self.call is not None:
            self._send_arguments(self.call, deltas)
        return deltas

    def _between_calls(self) -> bool:
        """Move past what separates calls, or begin the next call object; False when the text
        needs to grow before anything can be decided."""
        text, position = self.text, self.scanned
        if self.format.anywhere and not self.expects_call:  # Hermes: the next block opens with the marker
            marker = text.find(self.format.marker, position)
            if marker < 0:
                self.scanned = len(text) - _partial(text, self.format.marker)
                return False
            self.scanned, self.expects_call = marker + len(self.format.marker), True
            return True
        if text[position] == "{":
            self.call = _Call()
            return True
        rest = text[position:position + len(_MISTRAL_MARKER)]
        if not self.format.anywhere and _MISTRAL_MARKER.startswith(rest):
            if len(rest) < len(_MISTRAL_MARKER):
                return False  # "[" alone: the marker, or an array of calls? the next characters tell
            self.scanned += len(_MISTRAL_MARKER)
            return True
        if text[position] in _SEPARATORS and not (self.format.anywhere and text[position] in ";,[]"):
            self.scanned += 1
            return True
        self.stopped = True
        return False

    def _in_call(self, position: int, deltas: list[CallDelta]) -> None:
        """Take one character of the call object."""
        call, char = self.call, self.text[position]
        if call.in_string:
            if call.escaped:
                call.escaped = False
            elif char == "\\":
                call.escaped = True
            elif char == '"':
                call.in_string = False
                self._string_closed(call, position, deltas)
            return
        if char == '"':
            call.in_string = True
            if call.depth == 1 and call.key is None:
                call.key_start = position
            elif call.depth == 1 and call.value_start < 0:
                self._value_starts(call, position)
        elif char in "{[":
            if call.depth == 1 and call.key is not None and call.value_start < 0:
                self._value_starts(call, position)
            call.depth += 1
        elif char in "}]":
            call.depth -= 1
            if call.depth == 1 and call.value_start >= 0:  # an object or array value closed
                self._value_ends(call, position + 1, deltas)
            elif call.depth == 0:
                if call.value_start >= 0:  # a number or literal, ended by the object's close
                    self._value_ends(call, position, deltas)
                self._call_ends(call, deltas)
        elif call.depth == 1 and call.key is not None:
            if char == "," and call.value_start >= 0:
                self._value_ends(call, position, deltas)
            elif call.value_start < 0 and char not in " \t\r\n:":
                self._value_starts(call, position)

    def _string_closed(self, call: _Call, position: int, deltas: list[CallDelta]) -> None:
        if call.depth != 1:
            return
        if call.key is None:  # a key: its value follows
            call.key = _json_value(self.text[call.key_start:position + 1])
        elif call.value_start >= 0 and self.text[call.value_start] == '"':  # a string value
            self._value_ends(call, position + 1, deltas)

    def _value_starts(self, call: _Call, position: int) -> None:
        call.value_start = position
        if call.key in _ARGUMENT_KEYS and call.arguments is None:
            call.arguments = (position, -1)

    def _value_ends(self, call: _Call, end: int, deltas: list[CallDelta]) -> None:
        raw = self.text[call.value_start:end].rstrip()
        if call.key == "name" and call.name is None:
            name = _json_value(raw)
            if isinstance(name, str) and name:
                call.name, call.index, self.num_calls = name, self.num_calls, self.num_calls + 1
                deltas.append(CallDelta(call.index, name=name))
        elif call.arguments == (call.value_start, -1):
            call.arguments = (call.value_start, call.value_start + len(raw))
        self._send_arguments(call, deltas)
        call.key, call.value_start = None, -1

    def _call_ends(self, call: _Call, deltas: list[CallDelta]) -> None:
        if call.name is not None and call.arguments is None:
            deltas.append(CallDelta(call.index, arguments="{}"))  # a call without arguments takes none
        self.call, self.expects_call = None, False

    def _send_arguments(self, call: _Call, deltas: list[CallDelta]) -> None:
        """The arguments' text not sent yet: up to their end, or while an object or array is still
        open up to what has been scanned (a scalar goes out whole: its end is not known before).
        Only once the call's name is out: a name written after the arguments holds them back."""
        if call.index < 0 or call.arguments is None:
            return
        start, end = call.arguments
        if end < 0:
            if self.text[start] not in "{[":
                return
            end = self.scanned
        if end - start > call.arguments_sent:
            deltas.append(CallDelta(call.index, arguments=self.text[start + call.arguments_sent:end]))
            call.arguments_sent = end - start


def parse_whole(tool_format: ToolCallFormat, text: str) -> tuple[str | None, list[tuple[str, str]]]:
    """A whole output: (content or None, [(name, arguments)]), by the very parser a stream uses."""
    parser = ToolCallParser(tool_format)
    content, deltas = parser.feed(text)
    rest, more = parser.finish()
    calls: dict[int, list[str]] = {}
    for delta in deltas + more:
        call = calls.setdefault(delta.index, ["", ""])
        call[0] += delta.name
        call[1] += delta.arguments
    content += rest
    return (content or None), [(name, arguments) for name, arguments in calls.values()]


def _partial(text: str, marker: str) -> int:
    """The length of the longest tail of `text` that begins `marker`."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0


def _json_string(raw: str) -> str | None:
    value = _json_value(raw)
    return value if isinstance(value, str) else None


def _json_value(raw: str) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None

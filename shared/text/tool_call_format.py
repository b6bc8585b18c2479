"""How a model family writes tool calls: which chat templates use the format, the grammar that
makes an output a valid call (tool_choice required or a named function), and the parser that
splits an output into content and calls.

The engine announces the format its model's template uses (or the one --tool-call-parser names);
the frontend parses with it, whole and streamed alike. Arguments come back as the JSON text of
the object the model wrote, re-serialized, so a call reads the same however it was streamed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

FunctionCall = tuple[str, str]  # (name, arguments: a JSON object's text)


@dataclasses.dataclass(frozen=True)
class ParsedOutput:
    content: str | None  # the text before the calls; None when there is none (or only whitespace)
    calls: list[FunctionCall]


class MalformedCall(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class ToolCallFormat:
    name: str
    marker: str  # the text that opens the calls (at the start of the output unless `anywhere`)
    anywhere: bool  # calls may follow some content (else the output is all calls or all content)
    arguments_key: str  # the key of a call's arguments object
    template_markers: tuple[str, ...]  # a chat template containing one of these writes this format

    def parse(self, text: str) -> ParsedOutput:
        """Content and calls; an output whose calls do not parse is all content (nothing lost)."""
        start = self.call_start(text)
        if start is None:
            return ParsedOutput(_content(text), [])
        try:
            calls = self._calls(text[start:])
        except (MalformedCall, ValueError):
            return ParsedOutput(_content(text), [])
        return ParsedOutput(_content(text[:start]), calls)

    def call_start(self, text: str) -> int | None:
        """Where the calls begin in `text`, or None if they do not (yet)."""
        if self.anywhere:
            index = text.find(self.marker)
            return None if index < 0 else index
        stripped = text.lstrip()
        return len(text) - len(stripped) if stripped.startswith(self.marker) else None

    def grammar(self, tools: list[dict[str, Any]], parallel: bool) -> str:
        """A Lark grammar (llguidance's dialect) whose every match is one or more calls of `tools`
        (exactly one unless `parallel`)."""
        call = json.dumps({"anyOf": [self._call_schema(tool["function"]) for tool in tools]})
        return self._lark(call, parallel)

    def _call_schema(self, function: dict[str, Any]) -> dict[str, Any]:
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        return {"type": "object", "additionalProperties": False, "required": ["name", self.arguments_key],
                "properties": {"name": {"const": function["name"]}, self.arguments_key: parameters}}

    def _lark(self, call_schema: str, parallel: bool) -> str:
        raise NotImplementedError

    def _calls(self, text: str) -> list[FunctionCall]:
        raise NotImplementedError

    def _call(self, value: Any) -> FunctionCall:
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise MalformedCall(f"a tool call must be an object with a name; got {value!r}")
        arguments = value.get(self.arguments_key, value.get("arguments", value.get("parameters", {})))
        if not isinstance(arguments, dict):
            raise MalformedCall(f"a tool call's arguments must be an object; got {arguments!r}")
        return value["name"], json.dumps(arguments, ensure_ascii=False)


class _TaggedCalls(ToolCallFormat):
    """Hermes / Qwen 2.5: <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>, one block a
    call, after any content. A last block cut off before its closing tag still counts."""

    _BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)

    def _calls(self, text: str) -> list[FunctionCall]:
        return [self._call(json.loads(body)) for body in self._BLOCK.findall(text)]

    def _lark(self, call_schema: str, parallel: bool) -> str:
        repeat = ' ("\\n" call)*' if parallel else ""
        return f'start: call{repeat}\ncall: "<tool_call>\\n" %json {call_schema} "\\n</tool_call>"\n'


class _JsonObjectCalls(ToolCallFormat):
    """Llama 3.x JSON tool calling: the output is {"name": ..., "parameters": {...}} (after the
    <|python_tag|> special token, which the detokenizer drops), several joined by "; "."""

    def _calls(self, text: str) -> list[FunctionCall]:
        decoder, calls, position, text = json.JSONDecoder(), [], 0, text.strip()
        while position < len(text):
            value, position = decoder.raw_decode(text, position)
            calls.append(self._call(value))
            while position < len(text) and text[position] in "; \n\t":
                position += 1
        return calls

    def _lark(self, call_schema: str, parallel: bool) -> str:
        repeat = ' ("; " call)*' if parallel else ""
        return f"start: call{repeat}\ncall: %json {call_schema}\n"


class _JsonArrayCalls(ToolCallFormat):
    """A JSON array of calls: Mistral's, after [TOOL_CALLS] (a special token the detokenizer drops
    where the tokenizer marks it special), and vLLM's shape for a required call."""

    def _calls(self, text: str) -> list[FunctionCall]:
        text = text.strip().removeprefix("[TOOL_CALLS]")
        value = json.loads(text)
        if not isinstance(value, list) or not value:
            raise MalformedCall("tool calls must be a non-empty JSON array")
        return [self._call(item) for item in value]

    def _lark(self, call_schema: str, parallel: bool) -> str:
        array = {"type": "array", "items": json.loads(call_schema), "minItems": 1, **({} if parallel else {"maxItems": 1})}
        return f"start: %json {json.dumps(array)}\n"


HERMES = _TaggedCalls("hermes", "<tool_call>", True, "arguments", ("<tool_call>",))
LLAMA3_JSON = _JsonObjectCalls("llama3_json", "{", False, "parameters", ("<|python_tag|>",))
MISTRAL = _JsonArrayCalls("mistral", "[", False, "arguments", ("[TOOL_CALLS]",))
JSON_ARRAY = _JsonArrayCalls("json", "[", False, "parameters", ())  # no template writes it: required calls only
FORMATS = {f.name: f for f in (HERMES, LLAMA3_JSON, MISTRAL, JSON_ARRAY)}
PARSER_NAMES = ("hermes", "llama3_json", "mistral")  # what --tool-call-parser takes


def detect(chat_template: str | None) -> str:
    """The format a chat template writes tool calls in ("" when it shows no tool calling)."""
    for tool_format in (HERMES, MISTRAL, LLAMA3_JSON):
        if chat_template and any(marker in chat_template for marker in tool_format.template_markers):
            return tool_format.name
    return ""


def _content(text: str) -> str | None:
    return text if text.strip() else None

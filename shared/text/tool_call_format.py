"""How a model family writes tool calls: which chat templates use the format, what opens its
calls in an output, and the grammar that makes an output a valid call (tool_choice required or a
named function). The calls are parsed, whole or streamed alike, by shared/text/tool_call_parser.py.

The engine announces the format its model's template uses (or the one --tool-call-parser names).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class ToolCallFormat:
    name: str
    marker: str  # the text that opens the calls (at the start of the output unless `anywhere`)
    anywhere: bool  # calls may follow some content (else the output is all calls or all content)
    arguments_key: str  # the key of a call's arguments object in the format's grammar
    template_markers: tuple[str, ...]  # a chat template containing one of these writes this format

    def grammar(self, tools: list[dict[str, Any]], parallel: bool) -> str:
        """A Lark grammar (llguidance's dialect) whose every match is one or more calls of `tools`
        (exactly one unless `parallel`)."""
        call = {"anyOf": [self._call_schema(tool["function"]) for tool in tools]}
        return self._lark(call, parallel)

    def _call_schema(self, function: dict[str, Any]) -> dict[str, Any]:
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        return {"type": "object", "additionalProperties": False, "required": ["name", self.arguments_key],
                "properties": {"name": {"const": function["name"]}, self.arguments_key: parameters}}

    def _lark(self, call_schema: dict[str, Any], parallel: bool) -> str:
        schema = json.dumps(call_schema)
        if self.anywhere:  # Hermes / Qwen 2.5: <tool_call>\n{...}\n</tool_call>, one block a call
            repeat = ' ("\\n" call)*' if parallel else ""
            return f'start: call{repeat}\ncall: "<tool_call>\\n" %json {schema} "\\n</tool_call>"\n'
        if self.marker == "{":  # Llama 3.x: {...}, several joined by "; "
            repeat = ' ("; " call)*' if parallel else ""
            return f"start: call{repeat}\ncall: %json {schema}\n"
        array = {"type": "array", "items": call_schema, "minItems": 1, **({} if parallel else {"maxItems": 1})}
        return f"start: %json {json.dumps(array)}\n"  # a JSON array of calls


HERMES = ToolCallFormat("hermes", "<tool_call>", True, "arguments", ("<tool_call>",))
LLAMA3_JSON = ToolCallFormat("llama3_json", "{", False, "parameters", ("<|python_tag|>",))
MISTRAL = ToolCallFormat("mistral", "[", False, "arguments", ("[TOOL_CALLS]",))  # after [TOOL_CALLS], if kept
JSON_ARRAY = ToolCallFormat("json", "[", False, "parameters", ())  # vLLM's shape for a forced call; no template
FORMATS = {f.name: f for f in (HERMES, LLAMA3_JSON, MISTRAL, JSON_ARRAY)}
PARSER_NAMES = ("hermes", "llama3_json", "mistral")  # what --tool-call-parser takes


def detect(chat_template: str | None) -> str:
    """The format a chat template writes tool calls in ("" when it shows no tool calling)."""
    for tool_format in (HERMES, MISTRAL, LLAMA3_JSON):
        if chat_template and any(marker in chat_template for marker in tool_format.template_markers):
            return tool_format.name
    return ""

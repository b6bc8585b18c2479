"""Tool calling on /v1/chat/completions: the `tools`, `tool_choice` and `parallel_tool_calls`
fields, checked, and what they make of a request: the tools its chat template shows the model,
the grammar that forces a call (tool_choice required or a named function), and the format its
output is parsed with (shared/text/tool_call_format.py)."""

from __future__ import annotations

import dataclasses
import re
import secrets
import string
from typing import Any

import msgspec

from frontend.api_error import require
from frontend.structured_output import checked_grammar
from shared.text.tool_call_format import FORMATS, JSON_ARRAY, MISTRAL, ToolCallFormat

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ALNUM = string.ascii_letters + string.digits


class FunctionDefinition(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None  # the schema is enforced exactly whenever a call is forced


class Tool(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    function: FunctionDefinition


class FunctionName(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class NamedToolChoice(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    function: FunctionName


@dataclasses.dataclass(frozen=True)
class ToolUse:
    tools: list[dict[str, Any]]  # for the chat template, in OpenAI's shape
    parser: ToolCallFormat | None  # the output is split into content and calls with it (None: not parsed)
    grammar: str  # llguidance grammar forcing a call ("" unless tool_choice is required or named)


NO_TOOLS = ToolUse([], None, "")


async def tool_use(tools: list[Tool] | None, choice: str | NamedToolChoice | None, parallel: bool,
                   model_format: str) -> ToolUse:
    """What the tool fields ask for, given the format the model writes calls in ("" none); a 400
    naming the field for what cannot be honoured."""
    if not tools:
        require(choice in (None, "none", "auto"), "tool_choice", "tool_choice needs tools")
        return NO_TOOLS
    definitions = _definitions(tools)
    choice = "auto" if choice is None else choice
    if choice == "none":
        return ToolUse(definitions, None, "")
    parser = FORMATS[model_format] if model_format else None
    if choice == "auto":
        require(parser is not None, "tool_choice", "this model's chat template writes no tool calls Forge can "
                "parse; start the server with --tool-call-parser (hermes, llama3_json, mistral), or ask for "
                "tool_choice required or a named function")
        return ToolUse(definitions, parser, "")
    parser = parser or JSON_ARRAY  # a forced call needs no template format: vLLM's JSON array shape
    if choice == "required":
        forced, parallel_calls = definitions, parallel
    else:
        require(isinstance(choice, NamedToolChoice) and choice.type == "function", "tool_choice",
                'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}')
        forced = [d for d in definitions if d["function"]["name"] == choice.function.name]
        require(bool(forced), "tool_choice", f"tool_choice names {choice.function.name!r}, which is not in tools")
        parallel_calls = False
    grammar = await checked_grammar("tools", "lark", parser.grammar(forced, parallel_calls))
    return ToolUse(definitions, parser, grammar)


def _definitions(tools: list[Tool]) -> list[dict[str, Any]]:
    names = [tool.function.name for tool in tools]
    for tool in tools:
        require(tool.type == "function", "tools", f"tool type must be 'function'; got {tool.type!r}")
        require(bool(_NAME.fullmatch(tool.function.name)), "tools",
                f"tool names are 1-64 letters, digits, _ or -; got {tool.function.name!r}")
    require(len(set(names)) == len(names), "tools", "tool names must be unique")
    return [{"type": "function", "function": {k: v for k, v in msgspec.structs.asdict(tool.function).items()
                                              if v is not None}} for tool in tools]


def new_call_id(parser: ToolCallFormat) -> str:
    """Mistral's templates take 9 letters and digits and refuse anything else; the rest OpenAI's shape."""
    if parser is MISTRAL:
        return "".join(secrets.choice(_ALNUM) for _ in range(9))
    return f"call_{secrets.token_hex(12)}"


def tool_calls_json(calls: list[tuple[str, str]], ids: list[str]) -> list[dict[str, Any]]:
    """message.tool_calls of a whole answer."""
    return [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            for (name, arguments), call_id in zip(calls, ids)]

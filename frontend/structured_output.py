"""A request's output constraint: OpenAI's `response_format` or vLLM's `structured_outputs`, made
into one llguidance grammar (SamplingParams.grammar) that the engine enforces token by token.

Built and checked here, off the engine: a grammar that does not compile is a 400 naming the field
before anything is queued; the check runs in a child process (frontend/grammar_checker.py). Constraints Forge does not know are refused (the request
structs forbid unknown fields): a constraint never fails open into free text.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from frontend.api_error import ApiError, require
from frontend.grammar_checker import GrammarChecker

_CHECKER = GrammarChecker()


class JsonSchemaFormat(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    schema: dict[str, Any] | None = None  # required by Forge (and vLLM): no schema says nothing to enforce
    description: str | None = None
    strict: bool | None = None  # the schema is always enforced exactly


class ResponseFormat(msgspec.Struct, forbid_unknown_fields=True):
    type: str  # "text" (no constraint), "json_object" (any JSON object) or "json_schema"
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(msgspec.Struct, forbid_unknown_fields=True):
    """vLLM's extension: exactly one of json (a schema), regex, choice, grammar (GBNF, EBNF or Lark)
    and json_object."""

    json: dict[str, Any] | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False  # JSON without whitespace between tokens


async def grammar(response_format: ResponseFormat | None, structured: StructuredOutputs | None) -> str:
    """The llguidance grammar the request asks for ("" for none); a 400 naming the field when it
    is malformed or does not compile."""
    constraint = _constraint(response_format, structured)
    return "" if constraint is None else await checked_grammar(*constraint)


async def checked_grammar(param: str, kind: str, text: str, whitespace_flexible: bool = True) -> str:
    """`text` in llguidance's format `kind` (json, regex, choice, grammar, lark) compiled and
    checked; a 400 naming `param` when it does not compile."""
    compiled, error = await _CHECKER.compile(kind, text, whitespace_flexible)
    if error:
        raise ApiError(400, f"{param} does not compile: {error}", param)
    return compiled


def _constraint(response_format: ResponseFormat | None,
                structured: StructuredOutputs | None) -> tuple[str, str, str, bool] | None:
    """(the field to name in errors, llguidance's format name, the constraint's text, whether JSON
    may carry whitespace), or None for no constraint."""
    from_format = _from_response_format(response_format)
    from_structured = _from_structured_outputs(structured)
    require(from_format is None or from_structured is None, "structured_outputs",
            "give response_format or structured_outputs, not both")
    return from_format or from_structured


def _from_response_format(response_format: ResponseFormat | None) -> tuple[str, str, str, bool] | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return "response_format", "json", '{"type": "object"}', True
    require(response_format.type == "json_schema", "response_format",
            f"response_format type must be text, json_object or json_schema; got {response_format.type!r}")
    schema = response_format.json_schema
    require(schema is not None and schema.schema is not None, "response_format",
            "response_format json_schema needs json_schema.schema")
    return "response_format", "json", json.dumps(schema.schema), True


def _from_structured_outputs(structured: StructuredOutputs | None) -> tuple[str, str, str, bool] | None:
    if structured is None:
        return None
    given = {name: getattr(structured, name) for name in ("json", "regex", "choice", "grammar", "json_object")
             if getattr(structured, name) not in (None, False)}
    require(len(given) == 1, "structured_outputs",
            f"structured_outputs takes exactly one of json, regex, choice, grammar, json_object; got {sorted(given)}")
    (name, value), = given.items()
    param, flexible = f"structured_outputs.{name}", not structured.disable_any_whitespace
    if name == "json":
        return param, "json", value if isinstance(value, str) else json.dumps(value), flexible
    if name == "json_object":
        return param, "json", '{"type": "object"}', flexible
    if name == "choice":
        require(bool(value) and all(value), param, "structured_outputs.choice needs non-empty strings")
        return param, "choice", json.dumps(value), flexible
    return param, name, value, flexible

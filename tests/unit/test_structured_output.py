"""frontend/structured_output.py: each way of asking for a constraint becomes the llguidance
grammar it names, checked before anything is queued; what is malformed or does not compile is a
400 naming the field."""

from __future__ import annotations

import asyncio
import json

import llguidance
import pytest

from frontend import openai_api as api
from frontend.api_error import ApiError
from frontend.structured_output import grammar

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def _grammar(body: dict) -> str:
    request = api.decode(json.dumps({"model": "m", "prompt": "x", **body}).encode(), api.CompletionRequest)
    return asyncio.run(grammar(request.response_format, request.structured_outputs))


class _Bytes:
    """A tokenizer of one token a byte (and an end token): grammars checked on text, no model."""

    eos_token_id, bos_token_id = 256, None
    tokens = [bytes([b]) for b in range(256)] + [b"</s>"]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


_BYTES = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Bytes()))


def _accepts(compiled: str, text: str) -> bool:
    """Whether `compiled` matches all of `text`."""
    matcher = llguidance.LLMatcher(_BYTES, compiled, log_level=0)
    return matcher.consume_tokens(list(text.encode())) and matcher.is_accepting()


@pytest.mark.parametrize(("body", "good", "bad"), [
    ({"response_format": {"type": "json_object"}}, '{"a": [1, 2]}', "[1]"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA, "strict": True}}},
     '{"n": 3}', '{"n": "3"}'),
    ({"structured_outputs": {"json": SCHEMA}}, '{"n": 3}', '{"m": 3}'),
    ({"structured_outputs": {"json": json.dumps(SCHEMA), "disable_any_whitespace": True}}, '{"n":3}', '{"n": 3}'),
    ({"structured_outputs": {"regex": r"\d{3}-\d{4}"}}, "555-1234", "555-123"),
    ({"structured_outputs": {"regex": r"\d\w"}}, "1a", "\u0661a"),  # ASCII, as JavaScript and xgrammar read them
    ({"structured_outputs": {"choice": ["yes", "no"]}}, "no", "maybe"),
    ({"structured_outputs": {"grammar": 'root ::= "a" [0-9]+'}}, "a42", "b42"),  # GBNF
    ({"structured_outputs": {"grammar": 'start: "a" /[0-9]+/'}}, "a42", "a"),  # Lark
    ({"structured_outputs": {"json_object": True}}, "{}", '"x"'),
])
def test_each_constraint_becomes_the_grammar_it_names(body, good, bad):
    compiled = _grammar(body)
    assert _accepts(compiled, good) and not _accepts(compiled, bad)


def test_no_constraint_is_no_grammar():
    assert _grammar({}) == "" and _grammar({"response_format": {"type": "text"}}) == ""


@pytest.mark.parametrize(("body", "param"), [
    ({"structured_outputs": {"regex": "("}}, "structured_outputs.regex"),
    ({"structured_outputs": {"grammar": "root ::= undefined_rule"}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"json": {"type": "no-such-type"}}}, "structured_outputs.json"),
    ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"structured_outputs": {"structural_tag": "x"}}, "structured_outputs"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": 3}}}},
     "response_format"),
])
def test_a_constraint_that_cannot_be_enforced_is_a_400_naming_its_field(body, param):
    with pytest.raises(ApiError) as raised:
        _grammar(body)
    assert raised.value.status == 400 and raised.value.param == param, raised.value.message


def test_a_grammar_that_crashes_the_compiler_is_a_400_and_the_next_one_compiles():
    """A chain of 5,000 rules overflows llguidance's stack: the checker's child dies, not the frontend."""
    chain = "\n".join(["start: r0", *(f'r{i}: "w{i} " r{i + 1}?' for i in range(5000)), 'r5000: "end"'])
    with pytest.raises(ApiError) as raised:
        _grammar({"structured_outputs": {"grammar": chain}})
    assert raised.value.param == "structured_outputs.grammar" and "crashed" in raised.value.message
    assert _accepts(_grammar({"structured_outputs": {"regex": "a+"}}), "aaa")

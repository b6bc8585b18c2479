"""Tool calls: each family's format parses its calls out of an output; a stream, fed in any
pieces (one character at a time included), sends each call's name first, then its arguments in
fragments, and the deltas concatenated are exactly the calls of the whole output; forced calls are
grammars that admit only valid calls; the tool fields are checked before anything is queued."""

from __future__ import annotations

import asyncio
import json

import llguidance
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontend.api_error import ApiError
from frontend.tools import FunctionDefinition, FunctionName, NamedToolChoice, Tool, new_call_id, tool_use
from shared.text.tool_call_format import HERMES, JSON_ARRAY, LLAMA3_JSON, MISTRAL
from shared.text.tool_call_parser import ToolCallParser, parse_whole
from tests.unit.test_structured_output import _BYTES

WEATHER = Tool("function", FunctionDefinition("get_weather", parameters={
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}))
TIME = Tool("function", FunctionDefinition("get_time"))


def render(tool_format, calls: list[tuple[str, dict]]) -> str:
    """Calls written as a model of that family writes them."""
    key = tool_format.arguments_key
    objects = [{"name": name, key: arguments} for name, arguments in calls]
    if tool_format is HERMES:
        return "\n".join(f"<tool_call>\n{json.dumps(o)}\n</tool_call>" for o in objects)
    if tool_format is LLAMA3_JSON:
        return "; ".join(json.dumps(o) for o in objects)
    return ("[TOOL_CALLS]" if tool_format is MISTRAL else "") + json.dumps(objects)


@pytest.mark.parametrize("tool_format", [HERMES, LLAMA3_JSON, MISTRAL, JSON_ARRAY])
def test_each_format_parses_its_calls(tool_format):
    calls = [("get_weather", {"city": "Zürich", "days": [1, {"}": "{"}]}), ("get_time", {})]
    assert parse_whole(tool_format, render(tool_format, calls)) == (
        None, [(name, json.dumps(arguments)) for name, arguments in calls])  # the arguments' text as written


def test_hermes_keeps_content_before_calls_and_a_call_cut_off_before_its_closing_tag():
    assert parse_whole(HERMES, 'Let me look.\n<tool_call>\n{"name": "get_time", "arguments": {}}') == (
        "Let me look.\n", [("get_time", "{}")])


def test_a_name_written_after_the_arguments_still_comes_first():
    text = '<tool_call>\n{"arguments": {"city": "Oslo"}, "name": "get_weather"}\n</tool_call>'
    parser = ToolCallParser(HERMES)
    deltas = [d for c in text for d in parser.feed(c)[1]]
    assert deltas[0].name == "get_weather" and "".join(d.arguments for d in deltas) == '{"city": "Oslo"}'


@pytest.mark.parametrize("text", ["{no json", '{"arguments": {}}', "[]", "  ", '<tool_call>\n{"name": 3}'])
def test_an_output_without_a_named_call_is_all_content(text):
    for tool_format in (HERMES, LLAMA3_JSON, MISTRAL):
        assert parse_whole(tool_format, text) == ((text if text.strip() else None), [])


outputs = st.tuples(
    st.sampled_from([HERMES, LLAMA3_JSON, MISTRAL, JSON_ARRAY]),
    st.text(alphabet="ab <{[\n", max_size=12),  # content, with characters that begin calls
    st.lists(st.tuples(st.sampled_from(["get_weather", "get_time"]),
                       st.dictionaries(st.sampled_from(["city", "n", "a}b"]),
                                       st.text(alphabet='ab"\\{}[], ', max_size=6) | st.integers()
                                       | st.lists(st.integers(), max_size=2))),
             max_size=3),
    st.lists(st.integers(1, 7), min_size=1, max_size=40),  # the sizes of the streamed pieces
)


@settings(max_examples=300, deadline=None)
@given(outputs)
def test_a_stream_delivers_exactly_what_the_whole_output_parses_to(case):
    tool_format, content, calls, sizes = case
    text = (content if tool_format.anywhere or not calls else "") + render(tool_format, calls) if calls else content
    parser, sent, streamed, position = ToolCallParser(tool_format), "", {}, 0
    deltas = []
    for size in sizes * (len(text) // len(sizes) + 1):
        if position >= len(text):
            break
        piece_content, piece_deltas = parser.feed(text[position:position + size])
        sent, deltas, position = sent + piece_content, deltas + piece_deltas, position + size
    rest, last = parser.finish()
    for delta in deltas + last:
        assert bool(delta.name) == (delta.index not in streamed)  # the name first, once
        entry = streamed.setdefault(delta.index, ["", ""])
        entry[0] += delta.name
        entry[1] += delta.arguments
    whole = parse_whole(tool_format, text)
    assert ((sent + rest) or None, [tuple(call) for call in streamed.values()]) == whole
    if calls:  # and those are the calls written, arguments as their JSON text
        assert whole[1] == [(name, json.dumps(arguments)) for name, arguments in calls]


def test_one_character_at_a_time_streams_content_then_the_name_then_argument_fragments():
    text = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    parser = ToolCallParser(HERMES)
    pieces = [parser.feed(c) for c in text]
    assert "".join(content for content, _ in pieces) == "Sure.\n"
    deltas = [d for _, ds in pieces for d in ds]
    assert deltas[0].name == "get_weather" and len(deltas) > 5  # the arguments came in fragments
    assert "".join(d.arguments for d in deltas) == '{"city": "Oslo"}' and parser.finish() == ("", [])


def _grammar_accepts(grammar: str, text: str) -> bool:
    matcher = llguidance.LLMatcher(_BYTES, grammar, log_level=0)
    return matcher.consume_tokens(list(text.encode())) and matcher.is_accepting()


@pytest.mark.parametrize("tool_format", [HERMES, LLAMA3_JSON, MISTRAL, JSON_ARRAY])
def test_a_forced_call_admits_only_valid_calls(tool_format):
    tools = [{"type": "function", "function": {"name": t.function.name, "parameters": t.function.parameters}}
             for t in (WEATHER, TIME)]
    compiled = llguidance.LLMatcher.grammar_from_lark(tool_format.grammar(tools, parallel=True))
    single = llguidance.LLMatcher.grammar_from_lark(tool_format.grammar(tools, parallel=False))
    good, two = [("get_weather", {"city": "Oslo"})], [("get_weather", {"city": "Oslo"}), ("get_time", {})]
    assert _grammar_accepts(compiled, render(tool_format, good).removeprefix("[TOOL_CALLS]"))
    assert _grammar_accepts(compiled, render(tool_format, two).removeprefix("[TOOL_CALLS]"))
    assert not _grammar_accepts(single, render(tool_format, two).removeprefix("[TOOL_CALLS]"))
    for bad in ([("get_weather", {"city": 3})], [("get_weather", {})], [("delete_all", {})]):
        assert not _grammar_accepts(compiled, render(tool_format, bad).removeprefix("[TOOL_CALLS]"))


def _tool_use(tools, choice, model_format="hermes", parallel=True):
    return asyncio.run(tool_use(tools, choice, parallel, model_format))


def test_tool_choice_decides_the_template_tools_the_grammar_and_the_parser():
    assert _tool_use(None, None).tools == [] and _tool_use([WEATHER], "none").parser is None
    auto = _tool_use([WEATHER, TIME], None)
    assert auto.parser is HERMES and not auto.grammar and [t["function"]["name"] for t in auto.tools] == [
        "get_weather", "get_time"]
    named = _tool_use([WEATHER, TIME], NamedToolChoice("function", FunctionName("get_time")))
    assert _grammar_accepts(named.grammar, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    assert not _grammar_accepts(named.grammar, render(HERMES, [("get_weather", {"city": "Oslo"})]))
    required = _tool_use([WEATHER], "required", model_format="")  # no template format: vLLM's JSON array
    assert required.parser is JSON_ARRAY and required.grammar
    assert len(new_call_id(MISTRAL)) == 9 and new_call_id(MISTRAL).isalnum()


@pytest.mark.parametrize(("tools", "choice", "model_format", "param"), [
    ([WEATHER], "auto", "", "tool_choice"),  # nothing could parse the calls
    ([WEATHER], NamedToolChoice("function", FunctionName("nope")), "hermes", "tool_choice"),
    (None, "required", "hermes", "tool_choice"),
    ([WEATHER, WEATHER], "auto", "hermes", "tools"),
    ([Tool("function", FunctionDefinition("has space"))], "auto", "hermes", "tools"),
    ([Tool("retrieval", FunctionDefinition("f"))], "auto", "hermes", "tools"),
    ([Tool("function", FunctionDefinition("f", parameters={"type": 7}))], "required", "hermes", "tools"),
])
def test_tool_fields_that_cannot_be_honoured_are_a_400_naming_the_field(tools, choice, model_format, param):
    with pytest.raises(ApiError) as raised:
        _tool_use(tools, choice, model_format)
    assert raised.value.status == 400 and raised.value.param == param, raised.value.message

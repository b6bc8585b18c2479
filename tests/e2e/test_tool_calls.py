"""Tool calling through the real processes with the official openai client: forced calls are
always valid calls of the named tools, streamed calls equal the calls returned whole, and a
conversation carrying calls and their results is served."""

from __future__ import annotations

import json

import jsonschema

from tests.e2e.conftest import MODEL

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now"}}
ASK = [{"role": "user", "content": "What is the weather like in Paris?"}]


def _calls(message) -> list[tuple[str, dict]]:
    return [(call.function.name, json.loads(call.function.arguments)) for call in message.tool_calls]


def test_a_required_call_is_a_valid_call_streamed_or_whole(client):
    """(One call: SmolLM2-135M, allowed several, repeats its call until max_tokens.)"""
    forced = dict(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False,
                  max_tokens=80, temperature=0)
    whole = client.chat.completions.create(**forced)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    schemas = {"get_weather": WEATHER["function"]["parameters"], "get_time": {"type": "object"}}
    for name, arguments in _calls(choice.message):
        jsonschema.validate(arguments, schemas[name])
    assert all(call.id.startswith("call_") and call.type == "function" for call in choice.message.tool_calls)
    stream = client.chat.completions.create(**forced, stream=True)
    streamed, finish, num_fragments = {}, None, 0
    for chunk in stream:
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            if call.index not in streamed:  # a call's first delta: its id and name
                assert call.id and call.type == "function" and call.function.name
            entry = streamed.setdefault(call.index, ["", ""])
            entry[0] += call.function.name or ""
            entry[1] += call.function.arguments or ""
            num_fragments += 1
        finish = chunk.choices[0].finish_reason or finish
    assert [tuple(call) for call in streamed.values()] == [
        (call.function.name, call.function.arguments) for call in choice.message.tool_calls]  # byte for byte
    assert num_fragments > 2 and finish == "tool_calls"  # the arguments came in pieces


def test_a_named_function_is_the_one_called(client):
    response = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], max_tokens=60, temperature=0.9, seed=3,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    [(name, arguments)] = _calls(response.choices[0].message)
    assert name == "get_weather"
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])


def test_a_conversation_with_calls_and_results_is_served(client):
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 21, "sky": "clear"}'},
    ]
    response = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice="none",
                                              max_tokens=16, temperature=0)
    assert response.choices[0].message.content and not response.choices[0].message.tool_calls

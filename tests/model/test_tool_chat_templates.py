"""Tool definitions, assistant tool calls and tool results render through Forge's chat templating
exactly as transformers renders them, for the official templates of the tool-calling families
(tests/model/chat_templates, SOURCES.md there); and each template is recognised as the format its
model writes calls in."""

from __future__ import annotations

import datetime
import pathlib

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from shared.messages import ChatMessage, ToolCall
from shared.text.chat_template import render_chat_template, template_message
from shared.text.tool_call_format import detect

TEMPLATES = pathlib.Path(__file__).parent / "chat_templates"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL_ID = "abcDEF123"  # Mistral's templates take 9 letters and digits only
# As a transformers user writes it: content null beside calls, arguments as an object.
AS_TRANSFORMERS_TAKES_IT = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": '{"temperature": 21}', "tool_call_id": CALL_ID},
    {"role": "assistant", "content": "It is 21 degrees in Paris."},
    {"role": "user", "content": "And in Rome?"},
]
CONVERSATION = [  # the same on Forge's wire, as the frontend makes it of OpenAI's messages
    ChatMessage("user", "What is the weather in Paris?"),
    ChatMessage("assistant", "", [ToolCall(CALL_ID, "get_weather", '{"city": "Paris"}')]),
    ChatMessage("tool", '{"temperature": 21}', tool_call_id=CALL_ID),
    ChatMessage("assistant", "It is 21 degrees in Paris."),
    ChatMessage("user", "And in Rome?"),
]


@pytest.mark.parametrize(("template", "tool_format"), [
    ("qwen2.5.jinja", "hermes"), ("llama3.1.jinja", "llama3_json"), ("mistral.jinja", "mistral")])
def test_tools_and_tool_turns_render_as_transformers_renders_them(template, tool_format):
    text = (TEMPLATES / template).read_text()
    messages = [template_message(m) for m in CONVERSATION]
    special = {"bos_token": "<s>", "eos_token": "</s>", "date_string": datetime.date.today().strftime("%d %b %Y")}
    expected = render_jinja_template([AS_TRANSFORMERS_TAKES_IT], tools=[WEATHER], chat_template=text, add_generation_prompt=True,
                                     **special)[0][0]
    got = render_chat_template(text, messages, add_generation_prompt=True, tools=[WEATHER], **special)
    assert got == expected
    assert "get_weather" in got and "Paris" in got and "21" in got  # the tool, the call and the result are shown
    assert detect(text) == tool_format


def test_a_template_without_tool_calling_has_no_format(smollm2):
    assert detect(smollm2.tokenizer.chat_template) == ""

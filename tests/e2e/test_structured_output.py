"""Constrained output through the real processes, driven by the official openai client: the
response_format and structured_outputs shapes vLLM users send, streamed and whole."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pydantic
import pytest

from tests.e2e.conftest import MODEL
from tests.e2e.json_schemas import SCHEMAS

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}}}
ASK = [{"role": "user", "content": "Describe a person as JSON with a name and an age."}]


def test_json_schema_response_format_streamed_equals_whole(client):
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    whole = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=60, temperature=0,
                                           response_format=response_format)
    value = json.loads(whole.choices[0].message.content)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)
    assert whole.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=60, temperature=0,
                                            response_format=response_format, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == whole.choices[0].message.content


def test_every_answer_validates_against_its_schema_greedy_and_sampled(client):
    """Eleven schemas, each at temperature 0 and at 1.0 with two seeds, all in flight together."""
    def ask(name: str, temperature: float) -> list:
        response = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Answer in JSON: an example {name.replace('_', ' ')}."}],
            max_tokens=200, temperature=temperature, seed=1, n=1 if temperature == 0 else 2,
            response_format={"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name]}})
        return [(name, choice) for choice in response.choices]

    with ThreadPoolExecutor(2 * len(SCHEMAS)) as pool:
        answers = [a for batch in pool.map(lambda job: ask(*job), [(n, t) for n in SCHEMAS for t in (0.0, 1.0)])
                   for a in batch]
    assert len(answers) == 3 * len(SCHEMAS)
    for name, choice in answers:
        assert choice.finish_reason == "stop", (name, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), SCHEMAS[name])


class Flight(pydantic.BaseModel):
    origin: str = pydantic.Field(max_length=12)
    destination: str = pydantic.Field(max_length=12)
    seats: int = pydantic.Field(ge=1, le=9)


def test_the_openai_clients_parse_helper_gets_its_model(client):
    completion = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Book a flight from Paris to Rome for two."}],
        response_format=Flight, max_tokens=80, temperature=0)
    flight = completion.choices[0].message.parsed
    assert isinstance(flight, Flight) and 1 <= flight.seats <= 9


def test_structured_outputs_on_completions(client):
    phone = client.completions.create(model=MODEL, prompt="Call me at", max_tokens=12, temperature=1.0, n=4,
                                      extra_body={"structured_outputs": {"regex": r"\d{3}-\d{4}"}})
    assert all(re.fullmatch(r"\d{3}-\d{4}", c.text) for c in phone.choices), [c.text for c in phone.choices]
    json_object = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=60, temperature=0,
                                                 response_format={"type": "json_object"})
    assert isinstance(json.loads(json_object.choices[0].message.content), dict)
    gbnf = 'root ::= answer ", " color\nanswer ::= "yes" | "no"\ncolor ::= "red" | "blue"'
    grammar = client.completions.create(model=MODEL, prompt="Well?", max_tokens=12, temperature=1.0, n=4,
                                        extra_body={"structured_outputs": {"grammar": gbnf}})
    assert {c.text for c in grammar.choices} <= {"yes, red", "yes, blue", "no, red", "no, blue"}


@pytest.mark.parametrize(("extra", "param"), [
    ({"structured_outputs": {"regex": "("}}, "structured_outputs.regex"),
    ({"guided_json": PERSON}, "guided_json"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
])
def test_a_constraint_that_cannot_be_enforced_is_refused_by_name(client, extra, param):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, extra_body=extra)
    assert raised.value.body["param"] == param

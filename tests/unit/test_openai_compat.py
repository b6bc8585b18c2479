"""What OpenAI clients send by default is accepted: explicit nulls read as the defaults, neutral
values of fields Forge does not act on; what would change the answer and is not built is a 400
naming the field (constraints never fail open)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from frontend.client import EngineClient, Unavailable
from frontend.server import CLIENT, make_app
from frontend.worker_view import Worker
from shared.config import FrontendConfig

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
NULLS = {"temperature": None, "top_p": None, "n": None, "stream": None, "presence_penalty": None,
         "frequency_penalty": None, "logprobs": None, "stop": None, "seed": None, "max_tokens": None}
NEUTRAL = {"tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "parallel_tool_calls": True,
           "store": False, "metadata": {"app": "x"}, "user": "u", "service_tier": "auto",
           "messages": [{"role": "user", "content": "Hi", "name": "ann"},
                        {"role": "assistant", "content": "Hello", "refusal": None},
                        {"role": "user", "content": "Bye"}]}


def _status(tmp_path, monkeypatch, path: str, body: dict) -> tuple[int, dict]:
    """(status, body) from the frontend in process, whose engine refuses every valid request (503)."""
    def refuse(*_args, **_kwargs):
        raise Unavailable("no engine here")

    monkeypatch.setattr(EngineClient, "submit", refuse)

    async def run() -> tuple[int, dict]:
        app = make_app(FrontendConfig(worker_address=f"ipc://{tmp_path}/workers"))
        async with TestClient(TestServer(app)) as client:
            app[CLIENT].workers[1] = Worker(1, b"w", "m", 2048, last_seen_s=1e18, sees_engine=True)
            response = await client.post(path, json=body)
            return response.status, await response.json()

    return asyncio.run(run())


def test_explicit_nulls_and_neutral_fields_are_accepted(tmp_path, monkeypatch):
    for body in ({**CHAT, **NULLS}, {**CHAT, **NEUTRAL}):
        status, answer = _status(tmp_path, monkeypatch, "/v1/chat/completions", body)
        assert status == 503, answer  # past validation: only the (absent) engine refused it
    status, answer = _status(tmp_path, monkeypatch, "/v1/completions",
                             {"model": "m", "prompt": "Hi", **NULLS, "echo": None, "logprobs": None})
    assert status == 503, answer


@pytest.mark.parametrize(("field", "value"), [
    ("tool_choice", "required"),  # without tools
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x"}}),
    ("response_format", {"type": "xml"}),
    ("guided_json", {"type": "object"}),
    ("guided_regex", "a+"),
    ("guided_choice", ["a", "b"]),
    ("guided_grammar", "root ::= \"a\""),
    ("guided_decoding_backend", "xgrammar"),
])
def test_what_would_change_the_answer_and_is_not_built_is_refused_by_name(tmp_path, monkeypatch, field, value):
    status, answer = _status(tmp_path, monkeypatch, "/v1/chat/completions", {**CHAT, field: value})
    assert status == 400 and answer["error"]["param"] == field, answer

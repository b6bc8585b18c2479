"""Hostile HTTP bodies against every route of the frontend (in process, no engine): each gets a
4xx with an OpenAI error body, or the 503 the missing engine gives a valid one; never a 500.
The bodies are built from the OpenAPI document the frontend serves, so new fields are fuzzed too."""

from __future__ import annotations

import asyncio
import json

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontend import openapi
from frontend.client import EngineClient, Unavailable
from frontend.server import CLIENT, make_app
from frontend.worker_view import Worker
from shared.config import FrontendConfig

EXAMPLES = 120
ROUTES = [path for path, item in openapi.document()["paths"].items() if "post" in item]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=30), st.just("m"), st.just(""))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)


def _fields(path: str) -> list[str]:
    schemas = openapi.document()["components"]["schemas"]
    name = openapi.document()["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return list(schemas[name.rsplit("/", 1)[1]]["properties"])


@st.composite
def bodies(draw) -> tuple[str, bytes]:
    path = draw(st.sampled_from(ROUTES))
    kind = draw(st.sampled_from(["fields", "fields", "json", "bytes"]))
    if kind == "bytes":
        return path, draw(st.binary(max_size=64))
    if kind == "json":
        return path, json.dumps(draw(json_values)).encode()
    body = draw(st.dictionaries(st.sampled_from(_fields(path) + ["model", "extra_field"]), json_values, max_size=8))
    if draw(st.booleans()):
        body["model"] = "m"  # the served model: validation goes past the model check
    return path, json.dumps(body, allow_nan=True).encode()


def _refuse(*_args, **_kwargs):
    raise Unavailable("the engine is not here")  # what a valid body meets at submission


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(bodies(), min_size=1, max_size=5))
def test_no_body_gets_a_500(tmp_path, monkeypatch, requests):
    monkeypatch.setattr(EngineClient, "submit", _refuse)
    monkeypatch.setattr(EngineClient, "tokenize", _refuse)
    config = FrontendConfig(worker_address=f"ipc://{tmp_path}/workers")

    async def run() -> None:
        app = make_app(config)
        async with TestClient(TestServer(app)) as client:
            fake = Worker(1, b"w", "m", 2048, last_seen_s=1e18, sees_engine=True)  # a live worker serving "m"
            app[CLIENT].workers[1] = fake
            for path, data in requests:
                response = await client.post(path, data=data, headers={"Content-Type": "application/json"})
                assert response.status in (400, 404, 413, 503), (path, data, response.status)
                error = (await response.json())["error"]
                assert error["code"] == response.status and error["message"], (path, data)

    asyncio.run(run())


def test_the_openapi_document_is_served_and_names_every_route(tmp_path):
    async def run() -> dict:
        async with TestClient(TestServer(make_app(FrontendConfig(worker_address=f"ipc://{tmp_path}/w")))) as client:
            response = await client.get("/openapi.json")
            assert response.status == 200
            return await response.json()

    document = asyncio.run(run())
    assert set(document["paths"]) >= {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
                                      "/tokenize", "/detokenize", "/metrics", "/openapi.json"}
    assert "temperature" in document["components"]["schemas"]["CompletionRequest"]["properties"]

"""The OpenAPI document served at /openapi.json: every route, with the request bodies' JSON
Schemas generated from the very msgspec structs that decode them (so it cannot drift)."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from frontend import openai_api as api

_BODIES = {"/v1/completions": api.CompletionRequest, "/v1/chat/completions": api.ChatRequest,
           "/tokenize": api.TokenizeBody, "/detokenize": api.DetokenizeBody}
_GETS = {"/v1/models": "the served model", "/health": "200 when ready, else 503",
         "/metrics": "Prometheus metrics", "/openapi.json": "this document"}
_ERROR = {"description": "an OpenAI error body: {\"error\": {\"message\", \"type\", \"param\", \"code\"}}"}


@functools.cache
def document() -> dict[str, Any]:
    (*refs,), components = msgspec.json.schema_components(list(_BODIES.values()),
                                                          ref_template="#/components/schemas/{name}")
    paths: dict[str, Any] = {}
    for (path, struct), ref in zip(_BODIES.items(), refs):
        paths[path] = {"post": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}},
            "responses": {"200": {"description": f"the {struct.__name__} result (SSE when stream is true)"},
                          **{str(code): _ERROR for code in (400, 401, 404, 413, 429, 503)}}}}
    for path, summary in _GETS.items():
        paths[path] = {"get": {"summary": summary, "responses": {"200": {"description": summary}}}}
    return {"openapi": "3.1.0", "info": {"title": "Forge", "version": "1"}, "paths": paths,
            "components": {"schemas": components}}

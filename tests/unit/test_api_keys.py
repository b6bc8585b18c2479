"""--api-key: every route but /health needs `Authorization: Bearer KEY`; the key is never logged."""

from __future__ import annotations

import asyncio
import logging

from aiohttp.test_utils import TestClient, TestServer

from frontend.server import make_app
from shared.config import FrontendConfig

KEYS = ("sk-first-key", "sk-second-key")


def _statuses(tmp_path, calls: list[tuple[str, str, str | None]]) -> list[tuple[int, dict]]:
    config = FrontendConfig(worker_address=f"ipc://{tmp_path}/workers", api_keys=KEYS)

    async def run() -> list[tuple[int, dict]]:
        async with TestClient(TestServer(make_app(config))) as client:
            out = []
            for method, path, authorization in calls:
                headers = {} if authorization is None else {"Authorization": authorization}
                response = await client.request(method, path, headers=headers, json={} if method == "POST" else None)
                body = await response.json() if response.content_type == "application/json" else {}
                out.append((response.status, body))
            return out

    return asyncio.run(run())


def test_every_route_but_health_refuses_a_missing_or_wrong_key_and_takes_each_right_one(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    calls = [("GET", "/v1/models", None), ("GET", "/v1/models", "Bearer sk-wrong"),
             ("GET", "/v1/models", f"Basic {KEYS[0]}"), ("POST", "/v1/completions", None),
             ("GET", "/metrics", None), ("POST", "/tokenize", "Bearer "),
             ("GET", "/v1/models", f"Bearer {KEYS[0]}"), ("GET", "/v1/models", f"bearer {KEYS[1]}"),
             ("GET", "/metrics", f"Bearer {KEYS[1]}"), ("GET", "/health", None)]
    results = _statuses(tmp_path, calls)
    statuses = [status for status, _ in results]
    assert statuses[:6] == [401] * 6
    assert statuses[6:9] == [200, 200, 200]
    assert statuses[9] == 503  # open without a key: no engine here, so not ready
    error = results[0][1]["error"]
    assert error["type"] == "AuthenticationError" and error["code"] == 401 and "API key" in error["message"]
    assert not any(key in caplog.text for key in KEYS)


def test_keys_must_be_non_empty():
    for keys in ((" padded",), ("",)):
        try:
            FrontendConfig(api_keys=keys)
            raise AssertionError(f"{keys!r} was accepted")
        except ValueError as exc:
            assert "API key" in str(exc)

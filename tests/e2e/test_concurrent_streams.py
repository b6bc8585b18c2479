"""Many concurrent SSE streams through one pooled client, as `vllm bench serve` drives a server:
every stream must complete, whatever the request's Connection header says."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.e2e.conftest import MODEL

NUM_STREAMS = 64
POOL_SIZE = 16  # fewer connections than streams: the client reuses pooled connections


async def _stream(session: aiohttp.ClientSession, url: str, connection: str, index: int) -> tuple[str, str, int]:
    """(Connection response header, outcome, chunks) of one streamed completion."""
    body = {"model": MODEL, "prompt": f"Stream {index} says", "max_tokens": 3, "temperature": 0,
            "ignore_eos": True, "stream": True}
    try:
        async with session.post(url + "/v1/completions", json=body, headers={"Connection": connection}) as resp:
            chunks, done = 0, False
            async for line in resp.content:
                if line.strip() == b"data: [DONE]":
                    done = True
                elif line.startswith(b"data: {\"error\""):
                    return resp.headers.get("Connection", ""), "error event", chunks
                elif line.startswith(b"data: "):
                    chunks += 1
            return resp.headers.get("Connection", ""), "done" if done else "cut", chunks
    except aiohttp.ClientError as exc:  # the regression: reset or disconnected pooled connections
        return "", type(exc).__name__, 0


async def _run_streams(url: str, connection: str) -> list[tuple[str, str, int]]:
    # The pool settings of vllm bench serve: keep-alive pooling, limited to the concurrency.
    connector = aiohttp.TCPConnector(limit=POOL_SIZE, force_close=False, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        return await asyncio.gather(*(_stream(session, url, connection, i) for i in range(NUM_STREAMS)))


@pytest.mark.parametrize("connection", ["close", "keep-alive"])
def test_64_concurrent_streams_all_complete(stack, connection):
    results = asyncio.run(_run_streams(stack.url, connection))
    outcomes = [outcome for _, outcome, _ in results]
    assert outcomes == ["done"] * NUM_STREAMS, {o: outcomes.count(o) for o in set(outcomes)}
    assert all(chunks == 3 for _, _, chunks in results)  # one chunk per generated token
    # The response says what the server will do with the connection (HTTP/1.1 keeps it open unless
    # told "close"): a client must never pool a connection the server is about to close.
    assert {header for header, _, _ in results} == ({"close"} if connection == "close" else {""})

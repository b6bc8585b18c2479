"""The frontend's middlewares: OpenAI error bodies for every failure, and API keys."""

from __future__ import annotations

import asyncio
import hmac
import logging

from aiohttp import web

from frontend import openai_api as api
from frontend.client import QueueFull, Unavailable

RETRY_SOON = {"Retry-After": "5"}  # seconds: about what an engine restart takes with a small model
logger = logging.getLogger("forge.frontend")


@web.middleware
async def openai_errors(request: web.Request, handler) -> web.StreamResponse:
    """Every failure becomes an OpenAI error body with the right status, never a bare 500."""
    try:
        return await handler(request)
    except api.ApiError as exc:
        return web.json_response(exc.body(), status=exc.status, headers=RETRY_SOON if exc.status in (429, 503) else None)
    except Unavailable as exc:  # an engine restarting is back in seconds: say when to try again
        return web.json_response(api.ApiError(503, str(exc)).body(), status=503, headers=RETRY_SOON)
    except QueueFull as exc:
        return web.json_response(api.ApiError(429, str(exc)).body(), status=429, headers=RETRY_SOON)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = "the request body is too large" if exc.status == 413 else exc.reason
        return web.json_response(api.ApiError(exc.status, message).body(), status=exc.status)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # a bug: log it, answer 500 with a body
        logger.exception("unhandled error in %s", request.path)
        return web.json_response(api.ApiError(500, "internal server error").body(), status=500)


def api_key_check(keys: tuple[str, ...]):
    """Middleware: every route but /health needs `Authorization: Bearer KEY` with one of `keys`,
    compared in constant time; else 401 with an OpenAI error body. Keys are never logged."""
    expected = [key.encode() for key in keys]

    @web.middleware
    async def check(request: web.Request, handler) -> web.StreamResponse:
        if request.path != "/health":
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            given_bytes = given.strip().encode()
            # every key compared, so the time taken says nothing about which one came close
            matches = [hmac.compare_digest(given_bytes, key) for key in expected]
            if scheme.lower() != "bearer" or not any(matches):
                return web.json_response(api.ApiError(401, "a valid API key is required: send `Authorization: "
                                                           "Bearer KEY`").body(), status=401)
        return await handler(request)

    return check

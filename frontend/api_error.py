"""The error every request handler raises for a bad request: an HTTP status and OpenAI's error body."""

from __future__ import annotations

from typing import Any

_KINDS = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 413: "RequestTooLargeError",
          429: "RateLimitError", 503: "ServiceUnavailableError"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or _KINDS.get(status, "InternalServerError")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


def require(ok: bool, param: str, message: str) -> None:
    """A 400 naming `param` unless `ok`."""
    if not ok:
        raise ApiError(400, message, param)

"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web


@dataclass
class APIError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after: int | None = None  # seconds; set on overload answers
    retryable: bool | None = None  # False: x-should-retry: false even on a 5xx (a poison request)

    def __str__(self) -> str:  # pragma: no cover - debugging aid
        return f"{self.status} {self.code}: {self.message}"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
            headers["x-should-retry"] = "true"
        elif self.retryable is False or (400 <= self.status < 500 and self.status not in (408, 409, 429)):
            # Retrying the same request cannot succeed: tell the SDKs not to.
            headers["x-should-retry"] = "false"
        return web.Response(
            status=self.status, text=json.dumps(self.body()), content_type="application/json", headers=headers
        )


def invalid(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def model_not_found(model: str, available: list[str]) -> APIError:
    hint = f" Available models: {', '.join(available)}." if available else " This node serves no model yet."
    return APIError(
        404,
        f"The model '{model}' does not exist or is not served by this node.{hint}",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def overloaded(message: str, retry_after: int = 1) -> APIError:
    return APIError(503, message, "server_error", None, "overloaded", retry_after=retry_after)

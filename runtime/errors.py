"""The node's one error type: every failure a user or a client can see is a ``NodeError``.

It carries what each place that shows an error needs, so that none of them maps errors by hand: the
HTTP middleware renders it as an OpenAI error (``body()``, the status, ``Retry-After`` and
``x-should-retry``), the mesh sends it to a requester (``to_wire``/``from_wire``), and the CLI's
``main()`` prints its message and exits with its ``exit_code``. The subsystems' errors (models,
downloads, the mesh, the hub, the HTTP port) subclass it with their own defaults.

Plain Python, no imports from the rest of the runtime: every layer may raise it.
"""

from __future__ import annotations

from typing import Any

# Exit codes of the CLI (sysexits-like, so scripts can tell a usage mistake from a failure).
EXIT_FAILURE = 1
EXIT_USAGE = 2  # what was asked for does not exist (a model to serve, …)
EXIT_UNAVAILABLE = 3  # a service could not start (the HTTP port or the hub's port is taken, …)


class NodeError(Exception):
    """A failure in words for the user.

    ``status``: the HTTP status the API answers with; ``code``: a short stable word for programs
    (OpenAI's ``error.code``); ``type``: OpenAI's ``error.type`` (by default ``invalid_request_error``
    below 500, ``server_error`` from 500); ``param``: the request field at fault; ``retry_after``:
    seconds after which the same request may succeed; ``retryable``: False when retrying the same
    request can never succeed even on a 5xx (a request that may have crashed an engine)."""

    default_status = 500
    default_code: str | None = None
    exit_code = EXIT_FAILURE

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status if status is not None else self.default_status
        self.code = code if code is not None else self.default_code
        self.type = type or ("invalid_request_error" if self.status < 500 else "server_error")
        self.param = param
        self.retry_after = retry_after
        self.retryable = retryable

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status} {self.code}: {self.message})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields: pickle (the engine worker's pipe) rebuilds it through this.
        return (_rebuild, (type(self), self.message, self._fields()))

    def _fields(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "code": self.code,
            "type": self.type,
            "param": self.param,
            "retry_after": self.retry_after,
            "retryable": self.retryable,
        }

    def body(self) -> dict:
        """The OpenAI error shape."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """What tells a client (the OpenAI SDKs retry by themselves) whether to send it again."""
        if self.retry_after is not None:
            return {"Retry-After": str(self.retry_after), "x-should-retry": "true"}
        if self.retryable is False or (400 <= self.status < 500 and self.status not in (408, 409, 429)):
            return {"x-should-retry": "false"}  # retrying the same request cannot succeed
        return {}

    def to_wire(self) -> dict:
        """The error as a mesh message carries it (runtime/mesh/wire.py)."""
        d: dict[str, Any] = {"status": self.status, "error": self.body()["error"]}
        if self.retry_after is not None:
            d["retry_after"] = self.retry_after
        return d


def _rebuild(cls: type[NodeError], message: str, fields: dict[str, Any]) -> NodeError:
    e = cls.__new__(cls)
    NodeError.__init__(e, message, **fields)
    return e


class APIError(NodeError):
    """A request the API refuses or cannot answer, in OpenAI's terms (positional, as OpenAI lists them)."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(
            message, status=status, code=code, type=type, param=param, retry_after=retry_after, retryable=retryable
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


def type_name(v: Any) -> str:
    """A JSON value's type in the words an error message uses ("an object", "a string", ...)."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__
    )

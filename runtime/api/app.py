"""The aiohttp application: routes plus the middlewares that make every failure an OpenAI-shaped error
and enforce the Host/Origin rules."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from ..errors import APIError, NodeError, overloaded
from ..node import Node
from . import chat_page, control_routes, mesh_routes, node_routes, openai_routes, responses_routes
from .context import NODE_KEY
from .pressure import FD_PRESSURE, is_fd_exhaustion
from .security import host_allowed, origin_allowed

log = logging.getLogger(__name__)

CORS_HEADERS = "Authorization, Content-Type, OpenAI-Organization, OpenAI-Project, X-Stainless-*"


def error_response(e: NodeError) -> web.Response:
    """The one rendering of an error over HTTP: OpenAI's error body, its status, and the headers that
    tell a client whether to retry (NodeError.headers)."""
    return web.Response(
        status=e.status, text=json.dumps(e.body()), content_type="application/json", headers=e.headers()
    )


def _cors(resp: web.StreamResponse, origin: str | None) -> None:
    if origin:
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Vary"] = "Origin"


@web.middleware
async def guard(request: web.Request, handler) -> web.StreamResponse:
    node: Node = request.app[NODE_KEY]
    s = node.settings
    if not host_allowed(request.headers.get("Host"), s.allowed_hosts):
        return error_response(
            APIError(
                403,
                f"Requests for host '{request.headers.get('Host')}' are refused (DNS rebinding "
                f"protection). Use http://localhost:{s.port}, or allow this host name with "
                f"--allow-host.",
                "permission_error",
                None,
                "forbidden_host",
            )
        )
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, request.host, s.allowed_origins):
        return error_response(
            APIError(
                403,
                f"Browser requests from origin '{origin}' are refused. Allow it with "
                f"--allow-origin if you trust that site.",
                "permission_error",
                None,
                "forbidden_origin",
            )
        )
    if request.method == "OPTIONS" and origin:
        preflight = web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", CORS_HEADERS),
                "Access-Control-Max-Age": "600",
            },
        )
        _cors(preflight, origin)
        return preflight
    resp: web.StreamResponse
    try:
        if request.content_length is not None and request.content_length > s.max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(s.max_body_bytes, request.content_length)  # before reading it
        resp = await handler(request)
    except NodeError as e:
        resp = error_response(e)
    except web.HTTPException as e:
        resp = _http_exception(request, e)
    except (ConnectionResetError, ConnectionError):
        raise  # the client went away; nothing to answer
    except Exception as e:
        if is_fd_exhaustion(e):
            FD_PRESSURE.record(f"{request.method} {request.path} failed")
            resp = error_response(overloaded("The node is out of file descriptors right now; retry shortly."))
        else:
            log.exception("unhandled error in %s %s", request.method, request.path)
            resp = error_response(
                APIError(
                    500,
                    "The node hit an internal error while handling this request; it has been "
                    "logged and the node keeps serving. Retry, and report it if it happens again.",
                    "server_error",
                    None,
                    "internal_error",
                )
            )
    if not resp.prepared:
        _cors(resp, origin)
    return resp


def _too_large(limit: int) -> web.Response:
    return error_response(
        APIError(
            413,
            f"The request body is larger than this node accepts ({limit} bytes). Send less text per request.",
            "invalid_request_error",
            None,
            "request_too_large",
        )
    )


def _http_exception(request: web.Request, e: web.HTTPException) -> web.StreamResponse:
    if e.status == 404:
        return error_response(
            APIError(
                404,
                f"Unknown route: {request.method} {request.path}. The OpenAI API is under /v1 "
                f"(e.g. POST /v1/chat/completions).",
                "invalid_request_error",
                None,
                "not_found",
            )
        )
    if e.status == 405:
        allowed = ", ".join(sorted(getattr(e, "allowed_methods", ()) or ()))
        r = error_response(
            APIError(
                405,
                f"Method {request.method} is not allowed on {request.path}" + (f"; use {allowed}." if allowed else "."),
                "invalid_request_error",
                None,
                "method_not_allowed",
            )
        )
        if allowed:
            r.headers["Allow"] = allowed
        return r
    if e.status == 413:
        return _too_large(request.app[NODE_KEY].settings.max_body_bytes)
    if e.status < 400:
        return e  # redirects and the like pass through
    return error_response(APIError(e.status, e.reason or "HTTP error", "invalid_request_error", None, None))


def build_app(node: Node) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=node.settings.max_body_bytes)
    app[NODE_KEY] = node
    app.add_routes(openai_routes.routes)
    app.add_routes(responses_routes.routes)
    app.add_routes(node_routes.routes)
    app.add_routes(control_routes.routes)
    app.add_routes(mesh_routes.routes)
    app.add_routes(chat_page.routes)
    if node.entry is not None:  # a hosted entry: keys, limits, usage (runtime/entry/gate.py)
        node.entry.install(app)
    return app

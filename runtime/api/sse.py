"""Server-sent events: the framing of every stream the node sends (OpenAI answers, /api/events).

A stream is opened with ``open_stream`` (headers that keep proxies from buffering it), carries
``data`` events (or named ``event``s), a ``KEEPALIVE`` comment while it waits so that clients and
proxies do not time it out, and ends with ``end`` (OpenAI streams send ``DONE`` before it).
"""

from __future__ import annotations

import json

from aiohttp import web

HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def data(obj: object) -> bytes:
    """One event carrying ``obj`` as JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def event(name: str, obj: object) -> bytes:
    """One named event (``event: name``) carrying ``obj`` as JSON."""
    return f"event: {name}\n".encode() + data(obj)


async def open_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers=HEADERS)
    await resp.prepare(request)
    return resp


async def end(resp: web.StreamResponse) -> web.StreamResponse:
    await resp.write_eof()
    return resp

"""/health, /api/status and /api/events (SSE)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from . import sse
from .context import NODE_KEY

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    status, body = request.app[NODE_KEY].health()
    return web.json_response(body, status=status, headers={"Retry-After": "2"} if status == 503 else None)


@routes.get("/api/status")
async def status(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    return web.json_response(node.open_status() if node.settings.entry else node.status())


@routes.get("/api/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: a full status snapshot first, then every state change as it happens. On an entry
    node every change is sent as a fresh open status document instead (the changes name peers and URLs)."""
    node = request.app[NODE_KEY]
    snapshot = node.open_status if node.settings.entry else node.status
    q = node.subscribe()
    resp = await sse.open_stream(request)
    try:
        await resp.write(sse.event("status", snapshot()))
        while True:
            try:
                ev = await asyncio.wait_for(q.get(), node.settings.keepalive_seconds)
            except TimeoutError:
                await resp.write(sse.KEEPALIVE)
                continue
            if ev is None:  # the node is shutting down
                return await sse.end(resp)
            if node.settings.entry:
                ev = {"type": "status", **snapshot()}
            await resp.write(sse.event(ev["type"], ev))
    finally:
        node.unsubscribe(q)

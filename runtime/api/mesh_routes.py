"""The mesh over HTTP: /api/mesh (status, join, leave, limits, invite). (Answers from the mesh are the
OpenAI routes' business: runtime/answers.py.)"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..errors import APIError, invalid
from ..mesh.hub import HubError, create_invite
from ..validation import parse_json_body
from .context import NODE_KEY
from .security import check_admin

routes = web.RouteTableDef()


@routes.get("/api/mesh")
async def mesh_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE_KEY].mesh.status())


@routes.post("/api/mesh/join")
async def join(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    check_admin(request, node.admin_token)
    body = parse_json_body(await request.read())
    target = body.get("invite") or body.get("url") or ""
    if not isinstance(target, str):
        raise invalid(
            "'invite' must be a string: an invite token (cmi1.…) from the hub's owner, or a mesh URL "
            "(nats://host:4222).",
            "invite",
            "invalid_type",
        )
    if not target.strip() and not node.mesh.config.urls:
        raise invalid(
            "'invite' is required: an invite token (cmi1.…) from the hub's owner, or a mesh URL "
            "(nats://host:4222). (Without one, the node rejoins the mesh it was last in; it has "
            "none.)",
            "invite",
            "missing_required_parameter",
        )
    name = body.get("name")
    return web.json_response(await node.mesh.join(target, name if isinstance(name, str) else None))


@routes.post("/api/mesh/leave")
async def leave(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    check_admin(request, node.admin_token)
    return web.json_response(await node.mesh.leave())


@routes.post("/api/mesh/limits")
async def limits(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    check_admin(request, node.admin_token)
    body = parse_json_body(await request.read())
    return web.json_response(node.mesh.set_limits(body))


@routes.post("/api/mesh/invite")
async def invite(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    check_admin(request, node.admin_token)
    if node.hub is None:
        raise APIError(
            409,
            "This node does not host a private mesh; start it with `closedmesh serve --hub` to invite others.",
            "invalid_request_error",
            None,
            "no_hub",
        )
    body = parse_json_body(await request.read() or b"{}")
    ttl = body.get("ttl_seconds", 86400)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not (10 <= ttl <= 30 * 86400):
        raise invalid("'ttl_seconds' must be a number between 10 and 2592000 (30 days).", "ttl_seconds")
    role = body.get("role", "member")
    if not isinstance(role, str):
        raise invalid("'role' must be a string: 'member' or 'entry'.", "role")
    try:
        inv = await asyncio.to_thread(create_invite, node.hub.hub_dir, float(ttl), role)
    except HubError as e:
        raise invalid(str(e), "role") from None
    return web.json_response({"invite": inv.encode(), "expires_at": inv.expires_at, "urls": list(inv.urls)})

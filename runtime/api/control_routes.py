"""Control endpoints that change the node's state (models). Every one needs the local admin token and
refuses cross-origin browser requests (see security.check_admin); the Host guard applies as everywhere."""

from __future__ import annotations

from aiohttp import web

from ..errors import APIError, invalid
from ..validation import parse_json_body
from .context import NODE_KEY
from .security import check_admin

routes = web.RouteTableDef()


def _admin(request: web.Request):
    node = request.app[NODE_KEY]
    check_admin(request, node.admin_token)
    return node


def _listing_params(node) -> tuple[int, int]:
    return node.settings.ctx_per_slot or 4096, node.settings.slots or 1


@routes.get("/api/models")
async def list_models(request: web.Request) -> web.Response:
    node = _admin(request)
    ctx, slots = _listing_params(node)
    return web.json_response(node.manager.listing(node.cap, ctx, slots))


@routes.post("/api/models/pull")
async def pull(request: web.Request) -> web.Response:
    node = _admin(request)
    body = parse_json_body(await request.read())
    ref = body.get("model")
    if not isinstance(ref, str) or not ref.strip():
        raise invalid(
            "'model' is required: a catalog id (e.g. Qwen3-8B), a Hugging Face 'owner/repo/file.gguf', "
            "or a URL of a .gguf file.",
            "model",
            "missing_required_parameter",
        )
    m = node.manager.start_pull(ref.strip())
    return web.json_response(m.public(), status=202)


@routes.post("/api/models/{model_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    node = _admin(request)
    mid = request.match_info["model_id"]
    if not node.manager.cancel_pull(mid):
        raise APIError(404, f"No download of '{mid}' is running.", "invalid_request_error", "model", "not_downloading")
    return web.json_response({"id": mid, "cancelled": True})


@routes.delete("/api/models/{model_id}")
async def delete(request: web.Request) -> web.Response:
    node = _admin(request)
    mid = request.match_info["model_id"]
    if mid.lower() in (p.lower() for p in node.pinned):
        raise APIError(
            409,
            f"'{mid}' is served by this node since its start (--model); restart without it first.",
            "invalid_request_error",
            "model",
            "model_pinned",
        )
    await node.manager.delete(mid)
    return web.json_response({"id": mid, "deleted": True})


@routes.post("/api/models/{model_id}/{action:load|unload}")
async def load_or_unload(request: web.Request) -> web.Response:
    node = _admin(request)
    mid = request.match_info["model_id"]
    if request.match_info["action"] == "load":
        await node.manager.ensure_loaded(mid)
    else:
        await node.manager.unload(mid)
    return web.json_response(node.manager.get(mid).public())

"""The entry node's admin API: keys (create, list, revoke) and the gate's counters. It listens on
loopback only, on its own port, never on the public one, and needs the node's admin token; the
`closedmesh keys` commands use it. Its address is written to config/entry-admin.json for them."""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

import nats
from aiohttp import web

from ..api.app import error_response
from ..api.security import LOOPBACK_NAMES, check_admin, host_allowed
from ..errors import APIError, NodeError, invalid
from ..node import Node
from ..validation import parse_json_body
from .keys import DayUsage, KeyRecord, make_key, utc_day
from .options import Counters, EntryOptions
from .store import KeyStore, StoreUnavailable


class EntryService(Protocol):
    """What the admin API uses of the entry's gate (gate.py EntryService; not imported: the gate starts
    this API)."""

    node: Node
    nc: nats.NATS | None
    store: KeyStore
    counters: Counters
    options: EntryOptions


SERVICE_KEY = web.AppKey("entry", object)
ADMIN_FILE = "entry-admin.json"


def _service(request: web.Request, needs_keys: bool = True) -> EntryService:
    svc: Any = request.app[SERVICE_KEY]
    check_admin(request, svc.node.admin_token)
    if needs_keys and svc.store.denied is not None:  # not an empty list or "no such key": the reason
        raise StoreUnavailable(svc.store.denied)
    return svc


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    if not host_allowed(request.headers.get("Host"), ()) or request.headers.get("Origin"):
        return error_response(
            APIError(403, "The admin API takes requests from this machine's tools only.", "permission_error")
        )
    try:
        return await handler(request)
    except NodeError as e:
        return error_response(e)
    except StoreUnavailable as e:
        return error_response(APIError(503, str(e), "server_error", None, "entry_store"))
    except (TimeoutError, nats.errors.TimeoutError):
        denied = request.app[SERVICE_KEY].store.denied  # type: ignore[attr-defined]
        return error_response(
            APIError(503, denied, "server_error", None, "entry_store")
            if denied
            else APIError(
                504,
                "The mesh's hub did not answer in time; check that this entry node is connected "
                "(`closedmesh status`) and try again.",
                "server_error",
                None,
                "entry_store_timeout",
            )
        )
    except web.HTTPNotFound:
        return error_response(
            APIError(404, f"Unknown admin route {request.path}.", "invalid_request_error", None, "not_found")
        )


def _int_or_none(body: dict, name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise invalid(f"'{name}' must be a whole number of at least 1.", name)
    return v


async def create_key(request: web.Request) -> web.Response:
    svc = _service(request)
    body = parse_json_body(await request.read())
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise invalid("'name' is required: a name that says who or what the key is for.", "name")
    expires_in = body.get("expires_in")
    if expires_in is not None and (isinstance(expires_in, bool) or not isinstance(expires_in, (int, float))):
        raise invalid("'expires_in' must be a number of seconds.", "expires_in")
    await svc.store.wait_synced(10)
    if any(r.name == name.strip() and r.revoked_at is None for r in svc.store.records.values()):
        raise APIError(409, f"A key named '{name.strip()}' exists already; choose another name.", code="name_taken")
    try:
        key, rec = make_key(
            name,
            time.time(),
            rpm=_int_or_none(body, "rpm"),
            concurrent=_int_or_none(body, "concurrent"),
            tokens_per_day=_int_or_none(body, "tokens_per_day"),
            expires_in=float(expires_in) if expires_in is not None else None,
        )
    except ValueError as e:
        raise invalid(str(e)) from None
    await svc.store.add_key(rec)
    return web.json_response({"key": key, "record": rec.to_json()}, status=201)


async def _last_use(svc: EntryService, kid: str, now: float) -> float | None:
    for back in range(8):
        u = await svc.store.usage(kid, utc_day(now - back * 86400))
        if u.last_used:
            return u.last_used
    return None


async def list_keys(request: web.Request) -> web.Response:
    svc = _service(request)
    await svc.store.wait_synced(10)
    now = time.time()
    rows = []
    for rec in sorted(svc.store.records.values(), key=lambda r: r.created_at):
        today: DayUsage = await svc.store.usage(rec.id)
        rows.append(
            dict(
                rec.to_json(),
                usage_today=today.to_json(),
                last_used=await _last_use(svc, rec.id, now),
                day=utc_day(now),
            )
        )
    return web.json_response({"keys": rows})


async def revoke_key(request: web.Request) -> web.Response:
    svc = _service(request)
    await svc.store.wait_synced(10)
    try:
        rec: KeyRecord = svc.store.find(request.match_info["who"])
    except LookupError as e:
        raise APIError(404, str(e), code="key_not_found") from None
    rec = await svc.store.revoke(rec.id)
    return web.json_response({"record": rec.to_json()})


async def usage(request: web.Request) -> web.Response:
    svc = _service(request)
    await svc.store.wait_synced(10)
    try:
        rec = svc.store.find(request.match_info["who"])
    except LookupError as e:
        raise APIError(404, str(e), code="key_not_found") from None
    day = request.query.get("day") or utc_day(time.time())
    return web.json_response({"id": rec.id, "day": day, "usage": (await svc.store.usage(rec.id, day)).to_json()})


async def stats(request: web.Request) -> web.Response:
    svc = _service(request, needs_keys=False)
    conns = [nc for nc in (svc.node.mesh.membership.nc, svc.nc) if nc is not None]
    c = svc.counters
    return web.json_response(
        {
            "refused": c.refused,
            "throttled": c.throttled,
            "limited": c.limited,
            "accepted": c.accepted,
            "refused_by_code": c.by_code,
            "store_operations": svc.store.kv_ops,
            "keys": len(svc.store.records),
            "key_store_refused": svc.store.denied,  # why the hub refuses this node the buckets, or null
            # both connections to the hub: the mesh membership and the key store
            "mesh_messages": {
                k: sum(nc.stats[k] for nc in conns) for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")
            },
        }
    )


def build_admin_app(svc: EntryService) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    app[SERVICE_KEY] = svc
    app.router.add_post("/admin/keys", create_key)
    app.router.add_get("/admin/keys", list_keys)
    app.router.add_post("/admin/keys/{who}/revoke", revoke_key)
    app.router.add_get("/admin/keys/{who}/usage", usage)
    app.router.add_get("/admin/stats", stats)
    return app


async def start_admin(svc: EntryService) -> tuple[web.AppRunner, str]:
    """Listen on loopback (the admin host must be a loopback address) and say where, for the CLI."""
    host = svc.options.admin_host
    if host not in LOOPBACK_NAMES:
        raise ValueError(f"the entry's admin API listens on loopback only, not on {host}")
    runner = web.AppRunner(build_admin_app(svc), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, svc.options.admin_port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://{host}:{port}"
    path = svc.node.paths.config / ADMIN_FILE
    path.write_text(json.dumps({"url": url}))
    return runner, url

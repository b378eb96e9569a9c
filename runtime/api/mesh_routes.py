"""The mesh over HTTP: /api/mesh (status, join, leave, limits, invite) and the proxy that answers an
OpenAI request from the mesh when this node does not run it itself."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid

from aiohttp import web

from ..catalog import mesh_figures
from ..mesh.membership import MeshError
from ..mesh.requester import FINAL_CODES, MeshUnavailable, RemoteError
from ..stats import AnswerClock
from .errors import APIError, invalid
from .openai_routes import NODE_KEY
from .security import check_admin
from .validation import GenerationParams, parse_json_body

routes = web.RouteTableDef()


def _mesh_error(e: MeshError) -> APIError:
    return APIError(e.status, str(e), "invalid_request_error" if e.status < 500 else "server_error", None, e.code)


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
    try:
        return web.json_response(await node.mesh.join(target, name if isinstance(name, str) else None))
    except MeshError as e:
        raise _mesh_error(e) from None


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
    try:
        return web.json_response(node.mesh.set_limits(body))
    except MeshError as e:
        raise _mesh_error(e) from None


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
    from ..mesh.hub import create_invite

    inv = await asyncio.to_thread(create_invite, node.hub.hub_dir, float(ttl))
    return web.json_response({"invite": inv.encode(), "expires_at": inv.expires_at, "urls": list(inv.urls)})


# -- the proxy -----------------------------------------------------------------------------------------


def mesh_model_objects(node) -> dict[str, dict]:
    """Models served by live peers → their /v1/models extension data."""
    out = {}
    for mid, peers in node.mesh.directory.mesh_models().items():
        f = mesh_figures(p.model(mid) or {} for p in peers)
        out[mid] = {
            "peers": f["peers"],
            "context_length": f["context_length"],
            "tokens_per_second_p50": f["tps_p50_median"],  # the median across peers (docs/entry.md)
            "ttft_ms_p50": f["ttft_ms_p50_best"],  # the best (lowest) across peers
            "free_slots": f["free_slots"],
        }
    return out


async def proxy(
    request: web.Request, kind: str, body: dict, gp: GenerationParams, peers: list, clock: AnswerClock
) -> web.StreamResponse:
    """Answer from the mesh. Every choice runs on a peer, failing over to the next one when its peer is
    lost; the client sees one unbroken answer (or an explicit error, never a silent end)."""
    node = request.app[NODE_KEY]
    mesh = node.mesh
    queue: asyncio.Queue = asyncio.Queue()

    async def run_choice(i: int) -> None:
        b = dict(body)
        if i and gp.sampling.seed is not None:
            b["seed"] = (gp.sampling.seed + i) & 0xFFFFFFFF
        try:
            async for ev in mesh.generate(kind, b, gp.model, gp.max_tokens, list(peers) if i == 0 else []):
                queue.put_nowait((i, ev))
        except (MeshUnavailable, RemoteError) as e:
            queue.put_nowait((i, e))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never a silent end
            queue.put_nowait((i, MeshUnavailable(f"The mesh request failed: {e}", True)))

    tasks = [asyncio.get_running_loop().create_task(run_choice(i)) for i in range(gp.n)]
    started_at = int(time.time())
    cid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4()}"
    fp = "fp_" + hashlib.sha256(f"mesh|{gp.model}".encode()).hexdigest()[:10]
    texts: dict[int, list[str]] = {i: [] for i in range(gp.n)}
    finish: dict[int, str] = {}
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
    model_id = gp.model
    resp: web.StreamResponse | None = None
    pending_start = set(range(gp.n))
    buffered: list = []

    def as_error(e: Exception) -> APIError:
        if isinstance(e, RemoteError):
            err = e.error
            # A final code (engine_crashed): the request may be what crashed the peer's engine; the SDKs
            # must not send it again either (they retry 5xx by themselves otherwise).
            return APIError(
                e.status,
                err.get("message", "error"),
                err.get("type", "invalid_request_error"),
                err.get("param"),
                err.get("code"),
                retryable=False if err.get("code") in FINAL_CODES else None,
            )
        return APIError(503, str(e), "server_error", None, "mesh_unavailable", retry_after=5)

    def base(choices: list) -> dict:
        d = {
            "id": cid,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": started_at,
            "model": model_id,
            "system_fingerprint": fp,
            "choices": choices,
        }
        if gp.include_usage:
            d["usage"] = None
        return d

    def chunk(i: int, text: str | None, fin: str | None) -> dict:
        if kind == "chat":
            delta = {"content": text} if text is not None else {}
            return base([{"index": i, "delta": delta, "logprobs": None, "finish_reason": fin}])
        return base([{"text": text or "", "index": i, "logprobs": None, "finish_reason": fin}])

    async def send(obj: dict) -> None:
        await resp.write(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")

    try:
        while len(finish) < gp.n:
            try:
                i, ev = await asyncio.wait_for(queue.get(), node.settings.keepalive_seconds)
            except TimeoutError:
                if resp is not None:
                    await resp.write(b": keep-alive\n\n")
                continue
            if isinstance(ev, Exception):
                err = as_error(ev)
                if resp is None:
                    raise err
                await send(err.body())
                await resp.write_eof()
                return resp
            if ev["t"] == "start":
                model_id = ev.get("model") or model_id
                usage["prompt_tokens"] = max(usage["prompt_tokens"], ev["prompt_tokens"])
                pending_start.discard(i)
                if pending_start or not gp.stream or resp is not None:
                    continue
                # Every choice has a peer working on it: from here on errors go in the stream.
                resp = web.StreamResponse(
                    headers={
                        "Content-Type": "text/event-stream",
                        "Cache-Control": "no-cache",
                        "X-Accel-Buffering": "no",
                    }
                )
                await resp.prepare(request)
                if kind == "chat":
                    for j in range(gp.n):
                        await send(
                            base(
                                [
                                    {
                                        "index": j,
                                        "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None,
                                        "finish_reason": None,
                                    }
                                ]
                            )
                        )
                for j, e2 in buffered:
                    await send(chunk(j, e2, None))
                buffered.clear()
            elif ev["t"] == "d":
                if ev["pieces"]:
                    clock.token()
                texts[i].extend(ev["pieces"])
                if resp is not None:
                    # one chunk per token, as a local answer has them, in one write
                    await resp.write(
                        b"".join(
                            b"data: " + json.dumps(chunk(i, p, None), separators=(",", ":")).encode() + b"\n\n"
                            for p in ev["pieces"]
                        )
                    )
                elif gp.stream:
                    buffered.extend((i, p) for p in ev["pieces"])
            elif ev["t"] == "done":
                finish[i] = ev["finish_reason"]
                u = ev["usage"]
                usage["completion_tokens"] += int(u.get("completion_tokens", 0))
                usage["cached_tokens"] = min(usage["cached_tokens"] or 10**9, int(u.get("cached_tokens", 0)))
                if resp is not None:
                    await send(chunk(i, None, ev["finish_reason"]))
        total = {
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
            "prompt_tokens_details": {"cached_tokens": usage["cached_tokens"] or 0},
        }
        if not gp.stream:
            node.measured.record(gp.model, clock.sample(usage["completion_tokens"], gp.n))
            if kind == "chat":
                choices = [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": "".join(texts[i]), "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish[i],
                    }
                    for i in range(gp.n)
                ]
                obj = "chat.completion"
            else:
                choices = [
                    {"text": "".join(texts[i]), "index": i, "logprobs": None, "finish_reason": finish[i]}
                    for i in range(gp.n)
                ]
                obj = "text_completion"
            return web.json_response(
                {
                    "id": cid,
                    "object": obj,
                    "created": started_at,
                    "model": model_id,
                    "system_fingerprint": fp,
                    "choices": choices,
                    "usage": total,
                }
            )
        if gp.include_usage:
            d = base([])
            d["usage"] = total
            await send(d)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        node.measured.record(gp.model, clock.sample(usage["completion_tokens"], gp.n))
        return resp
    finally:
        for t in tasks:
            t.cancel()  # a client that went away cancels the work on the serving peers

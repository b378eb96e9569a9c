"""The OpenAI surface: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import struct
import time
import uuid
from typing import Any

from aiohttp import web

from .. import __version__
from ..catalog import model_extension
from ..engine.engine import EmbeddingsUnsupported, ModelEngine
from ..engine.events import DoneEvent, EngineUnavailable, ErrorEvent, TokenEvent
from ..generation import (
    Generation,
    Job,
    LoopPump,
    available_models,
    check_text_fits,
    engine_for,
    prepare_chat,
    prepare_completion,
)
from ..mesh.router import local_has_room
from ..node import Node
from ..stats import AnswerClock
from .errors import APIError, invalid, model_not_found
from .validation import (
    GenerationParams,
    parse_embedding_inputs,
    parse_generation,
    parse_json_body,
    parse_messages,
    parse_prompts,
)

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
NODE_KEY = web.AppKey("node", Node)


def _node(request: web.Request) -> Node:
    return request.app[NODE_KEY]


# -- models ------------------------------------------------------------------------------------------


def _model_object(node: Node, m, mesh: dict | None, cat: dict) -> dict:
    e: ModelEngine | None = m.engine
    stats = e.stats.summary() if e else {}
    return {
        "id": m.id,
        "object": "model",
        "created": int(m.loaded_at or (m.path.stat().st_mtime if m.path and m.path.exists() else node.started_at)),
        "owned_by": "closedmesh",
        "closedmesh": {
            "served_by": "local+mesh" if mesh else "local",
            "state": m.state,
            "peers": mesh["peers"] if mesh else 0,
            "context_length": e.n_ctx_seq if e else None,
            "slots": e.n_slots if e else None,
            "tokens_per_second_p50": stats.get("tokens_per_second_p50"),
            "ttft_ms_p50": stats.get("ttft_ms_p50"),
            "samples": stats.get("samples", 0),
            **model_extension(cat),
        },
    }


def _mesh_object(node: Node, mid: str, info: dict, cat: dict) -> dict:
    return {
        "id": mid,
        "object": "model",
        "created": int(node.started_at),
        "owned_by": "closedmesh",
        "closedmesh": {
            "served_by": "mesh",
            "state": "ready",
            "peers": info["peers"],
            "context_length": info["context_length"],
            "slots": None,
            "free_slots": info["free_slots"],
            "tokens_per_second_p50": info["tokens_per_second_p50"],
            "ttft_ms_p50": info["ttft_ms_p50"],
            **model_extension(cat),
        },
    }


def _all_models(node: Node) -> list[dict]:
    """Local models (marked local or local+mesh) and the models only peers serve."""
    from .mesh_routes import mesh_model_objects

    mesh = mesh_model_objects(node) if node.mesh.connected else {}
    cat = {k.lower(): v for k, v in node.catalog()["models"].items()}
    lower = {k.lower(): k for k in mesh}
    out = []
    for m in node.manager.routable():
        key = lower.pop(m.id.lower(), None)
        out.append(_model_object(node, m, mesh.get(key) if key else None, cat.get(m.id.lower(), {})))
    out += [_mesh_object(node, k, mesh[k], cat.get(k.lower(), {})) for k in lower.values()]
    return out


def _available(node: Node) -> list[str]:
    return available_models(node)


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": _all_models(_node(request))})


@routes.get("/v1/models/{model_id:.+}")
async def get_model(request: web.Request) -> web.Response:
    node = _node(request)
    mid = request.match_info["model_id"]
    hit = next((o for o in _all_models(node) if o["id"].lower() == mid.lower()), None)
    if hit is None:
        raise model_not_found(mid, _available(node))
    return web.json_response(hit)


# -- shared generation machinery --------------------------------------------------------------------


async def _read_body(request: web.Request) -> dict:
    return parse_json_body(await request.read())


def _fingerprint(engine: ModelEngine, backend: str) -> str:
    h = hashlib.sha256(f"{__version__}|{engine.path.name}|{backend}".encode()).hexdigest()[:10]
    return f"fp_{h}"


PUMP_KEY = web.AppKey("pump", LoopPump)


async def install_pump(app: web.Application) -> None:
    """on_startup: one pump per server, bound to the loop it runs on."""
    app[PUMP_KEY] = LoopPump(asyncio.get_running_loop())


def _usage(jobs: list[Job]) -> dict:
    # n choices of one prompt share it: count each distinct prompt once, as OpenAI does.
    prompt = sum({id(j.req.prompt): j.prompt_tokens for j in jobs}.values())
    completion = sum(j.done.completion_tokens for j in jobs if j.done)
    cached = min((j.done.cached_tokens for j in jobs if j.done), default=0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _engine_error(ev: ErrorEvent) -> APIError:
    if ev.code == "invalid_grammar":
        return invalid(ev.message, "response_format")
    if ev.code == "overloaded":
        return APIError(503, ev.message, "server_error", None, ev.code, retry_after=1)
    if ev.code == "engine_crashed":
        # Not retried: the SDKs retry 5xx by themselves unless told not to (x-should-retry: false).
        return APIError(500, ev.message, "server_error", None, ev.code, retryable=False)
    return APIError(503 if ev.code == "engine_stopped" else 500, ev.message, "server_error", None, ev.code)


def _record_measured(node: Node, gen: Generation, clock: AnswerClock) -> None:
    """A finished answer with its usage: one end-to-end sample for the catalog (runtime/stats.py)."""
    node.measured.record(gen.engine.id, clock.sample(_usage(gen.jobs)["completion_tokens"], len(gen.jobs)))


async def _collect(gen: Generation, clock: AnswerClock) -> None:
    while not gen.finished:
        idx, ev = await gen.next(None)
        job = gen.jobs[idx]
        if isinstance(ev, TokenEvent):
            clock.token()
            job.text.append(ev.text)
        elif isinstance(ev, DoneEvent):
            job.done = ev
        elif isinstance(ev, ErrorEvent):
            gen.cancel()
            raise _engine_error(ev)


async def _stream(
    request: web.Request,
    gen: Generation,
    make_chunk,
    first_chunks: list[dict],
    include_usage: bool,
    usage_chunk,
    clock: AnswerClock,
) -> web.StreamResponse:
    node = _node(request)
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)

    async def send(obj: dict) -> None:
        await resp.write(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")

    for c in first_chunks:
        await send(c)
    keepalive = node.settings.keepalive_seconds
    while not gen.finished:
        try:
            idx, ev = await gen.next(keepalive)
        except TimeoutError:
            # Waiting in the queue or reading a long prompt: keep proxies and clients from timing out.
            await resp.write(b": keep-alive\n\n")
            continue
        job = gen.jobs[idx]
        if isinstance(ev, TokenEvent):
            clock.token()
            await send(make_chunk(idx, ev.text, None))
        elif isinstance(ev, DoneEvent):
            job.done = ev
            await send(make_chunk(idx, None, ev.finish_reason))
        elif isinstance(ev, ErrorEvent):
            gen.cancel()
            err = _engine_error(ev)
            await send(err.body())
            await resp.write_eof()
            return resp
    if include_usage:
        await send(usage_chunk(_usage(gen.jobs)))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    _record_measured(node, gen, clock)
    return resp


# -- chat completions -------------------------------------------------------------------------------


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    clock = AnswerClock()
    body = await _read_body(request)
    gp = parse_generation(body, None, None)
    parse_messages(body)  # a bad request is refused here, not after a trip through the mesh
    remote = route(node, gp)
    if remote:
        from .mesh_routes import proxy

        return await proxy(request, "chat", body, gp, remote, clock)
    prep = await prepare_chat(node, body, gp)
    engine, gp = prep.engine, prep.gp
    gen = Generation(engine, prep.prompts, gp, request.app[PUMP_KEY])
    cid = f"chatcmpl-{uuid.uuid4()}"
    created = int(time.time())
    fp = _fingerprint(engine, node.cap.backend if node.cap else "cpu")
    model_id = engine.id
    gen.submit()
    try:
        if not gp.stream:
            await _collect(gen, clock)
            _record_measured(node, gen, clock)
            choices = [
                {
                    "index": j.index,
                    "message": {"role": "assistant", "content": "".join(j.text), "refusal": None},
                    "logprobs": None,
                    "finish_reason": j.done.finish_reason,
                }
                for j in gen.jobs
            ]
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model_id,
                    "system_fingerprint": fp,
                    "choices": choices,
                    "usage": _usage(gen.jobs),
                }
            )

        def base(choices: list) -> dict:
            d = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_id,
                "system_fingerprint": fp,
                "choices": choices,
            }
            if gp.include_usage:
                d["usage"] = None
            return d

        def chunk(idx: int, text: str | None, finish: str | None) -> dict:
            delta = {"content": text} if text is not None else {}
            return base([{"index": idx, "delta": delta, "logprobs": None, "finish_reason": finish}])

        def usage_chunk(usage: dict) -> dict:
            d = base([])
            d["usage"] = usage
            return d

        first = [
            base(
                [
                    {
                        "index": j.index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for j in gen.jobs
        ]
        return await _stream(request, gen, chunk, first, gp.include_usage, usage_chunk, clock)
    finally:
        gen.cancel()  # no-op for finished jobs; frees the slots of a client that went away


# -- text completions -------------------------------------------------------------------------------


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    clock = AnswerClock()
    body = await _read_body(request)
    gp = parse_generation(body, None, 16)  # OpenAI's default max_tokens for completions is 16
    prompts_in = parse_prompts(body)
    remote = route(node, gp)
    if remote:
        if len(prompts_in) > 1 or body.get("echo"):
            raise invalid(
                f"'{gp.model}' is served by mesh peers, which take one prompt per request and no "
                f"echo; send the prompts as separate requests.",
                "prompt",
                "mesh_unsupported",
            )
        from .mesh_routes import proxy

        return await proxy(request, "completion", body, gp, remote, clock)
    prep = await prepare_completion(node, body, gp)
    engine, gp, prompts, texts, echo = prep.engine, prep.gp, prep.prompts, prep.texts, prep.echo
    gen = Generation(engine, prompts, gp, request.app[PUMP_KEY])
    cid = f"cmpl-{uuid.uuid4()}"
    created = int(time.time())
    fp = _fingerprint(engine, node.cap.backend if node.cap else "cpu")
    prompt_text_for = lambda idx: texts[idx // gp.n]  # noqa: E731
    gen.submit()
    try:
        if not gp.stream:
            await _collect(gen, clock)
            _record_measured(node, gen, clock)
            choices = [
                {
                    "text": (prompt_text_for(j.index) if echo else "") + "".join(j.text),
                    "index": j.index,
                    "logprobs": None,
                    "finish_reason": j.done.finish_reason,
                }
                for j in gen.jobs
            ]
            return web.json_response(
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": engine.id,
                    "system_fingerprint": fp,
                    "choices": choices,
                    "usage": _usage(gen.jobs),
                }
            )

        def base(choices: list) -> dict:
            d = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": engine.id,
                "system_fingerprint": fp,
                "choices": choices,
            }
            if gp.include_usage:
                d["usage"] = None
            return d

        def chunk(idx: int, text: str | None, finish: str | None) -> dict:
            return base([{"text": text or "", "index": idx, "logprobs": None, "finish_reason": finish}])

        def usage_chunk(usage: dict) -> dict:
            d = base([])
            d["usage"] = usage
            return d

        first = [chunk(j.index, prompt_text_for(j.index), None) for j in gen.jobs] if echo else []
        return await _stream(request, gen, chunk, first, gp.include_usage, usage_chunk, clock)
    finally:
        gen.cancel()


# -- embeddings -------------------------------------------------------------------------------------


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    node = _node(request)
    body = await _read_body(request)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid(
            "'model' is required: name the model to use (GET /v1/models lists them).",
            "model",
            "missing_required_parameter",
        )
    items = parse_embedding_inputs(body)
    engine = await engine_for(node, model.strip())
    fmt = body.get("encoding_format") or "float"
    data = []
    total = 0
    for i, item in enumerate(items):
        if isinstance(item, list) and any(not (0 <= t < engine.n_vocab) for t in item):
            raise invalid(f"'input[{i}]' contains a token id outside this model's vocabulary.", "input")
        if isinstance(item, str):
            check_text_fits(engine, item, f"input[{i}]", "input")
        try:
            vec, n = await engine.embed(item)
        except EngineUnavailable as e:
            raise APIError(503, str(e), "server_error", None, "model_restarting", retry_after=e.retry_after) from None
        except EmbeddingsUnsupported as e:
            raise invalid(str(e), "model", "embeddings_not_supported") from None
        except OverflowError as e:
            raise APIError(
                400,
                f"This model's maximum context length is {engine.n_ctx_seq} tokens. However, "
                f"input[{i}] resulted in {e.args[0]} tokens. Please reduce its length.",
                "invalid_request_error",
                "input",
                "context_length_exceeded",
            ) from None
        total += n
        emb: Any = vec
        if fmt == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return web.json_response(
        {"object": "list", "data": data, "model": engine.id, "usage": {"prompt_tokens": total, "total_tokens": total}}
    )


# -- routing between this node and the mesh ----------------------------------------------------------


def route(node: Node, gp: GenerationParams) -> list | None:
    """None: run here. Otherwise the peers to try, best first (the mesh proxies the request)."""
    mesh = node.mesh
    if mesh is None or not mesh.connected:
        return None
    peers = mesh.candidates(gp.model, gp.max_tokens)
    if not peers:
        capped = mesh.candidates(gp.model, None)
        if capped and not node.find(gp.model):
            cap = max((p.announcement.get("limits") or {}).get("max_tokens") or 0 for p in capped)
            raise invalid(
                f"The peers serving '{gp.model}' accept at most {cap} tokens per mesh request; "
                f"ask for max_tokens <= {cap}.",
                "max_tokens",
                "mesh_limit",
            )
        return None
    m = node.find(gp.model)
    if m is None or m not in node.manager.routable():
        return peers
    e = m.engine
    if e is None:
        return None  # served here, loads on first use
    c = e.counts()
    if local_has_room(c["slots"] - c["slots_busy"], c["queued"]):
        return None
    # This node is full: a peer with room takes the request, otherwise it waits in the local queue.
    free = [p for p in peers if mesh.peer_has_room(p, gp.model)]
    return free or None

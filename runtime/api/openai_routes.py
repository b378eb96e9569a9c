"""The OpenAI surface: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings."""

from __future__ import annotations

import base64
import logging
import struct
import time
from typing import Any

from aiohttp import web

from ..answers import answer
from ..catalog import model_extension
from ..engine.engine import EmbeddingsUnsupported, ModelEngine
from ..engine.events import EngineUnavailable, Failed, Text
from ..errors import APIError, invalid, model_not_found
from ..generation import Answer, check_text_fits, tool_format
from ..node import Node
from ..stats import AnswerClock
from ..validation import (
    GenerationParams,
    parse_embedding_inputs,
    parse_generation,
    parse_json_body,
    parse_messages,
    parse_prompts,
)
from . import openai_format as fmt
from . import sse
from .context import USAGE_SINK, node_of

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


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
            # How this model writes tool calls, from its chat template (runtime/tools/formats.py).
            "tool_format": tool_format(e).name if e else None,
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
    mesh = node.mesh.directory.model_summaries() if node.mesh.connected else {}
    cat = {k.lower(): v for k, v in node.catalog()["models"].items()}
    lower = {k.lower(): k for k in mesh}
    out = []
    for m in node.manager.routable():
        key = lower.pop(m.id.lower(), None)
        out.append(_model_object(node, m, mesh.get(key) if key else None, cat.get(m.id.lower(), {})))
    out += [_mesh_object(node, k, mesh[k], cat.get(k.lower(), {})) for k in lower.values()]
    return out


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": _all_models(node_of(request))})


@routes.get("/v1/models/{model_id:.+}")
async def get_model(request: web.Request) -> web.Response:
    node = node_of(request)
    mid = request.match_info["model_id"]
    hit = next((o for o in _all_models(node) if o["id"].lower() == mid.lower()), None)
    if hit is None:
        raise model_not_found(mid, node.available_models())
    return web.json_response(hit)


# -- chat and text completions ----------------------------------------------------------------------


async def _read_body(request: web.Request) -> dict:
    return parse_json_body(await request.read())


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    clock = AnswerClock()
    body = await _read_body(request)
    gp = parse_generation(body, None, None)
    parse_messages(body)  # a bad request is refused here, not after a trip through the mesh
    return await respond(request, "chat", gp, await answer(node_of(request), "chat", body, gp), clock)


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    clock = AnswerClock()
    body = await _read_body(request)
    gp = parse_generation(body, None, 16, "completion")  # OpenAI's default max_tokens for completions is 16
    if gp.tools is not None and gp.tools.tools:
        raise invalid("'tools' is for /v1/chat/completions; /v1/completions takes none.", "tools")
    parse_prompts(body)
    if gp.sampling.logprobs is not None and body.get("echo") is True:
        raise invalid(
            "'logprobs' with 'echo' (log probabilities of the prompt's tokens) is not supported; "
            "send one or the other.",
            "echo",
            "unsupported_parameter",
        )
    ans = await answer(node_of(request), "completion", body, gp)
    return await respond(request, "completion", gp, ans, clock)


async def respond(
    request: web.Request, kind: str, gp: GenerationParams, ans: Answer, clock: AnswerClock
) -> web.StreamResponse:
    """Send an answer (from this node or the mesh) as one JSON body or, with ``stream``, as SSE chunks.
    The stream opens once every choice has started: a failure before that is an HTTP error, one after it
    an SSE ``data: {"error": ...}`` event that ends the stream (never a silent end). An answer that ends
    with its usage is one sample of the catalog's measured figures (``clock``: timed from the request)."""
    created = int(time.time())
    tally = fmt.Tally(ans.n, gp.n)
    c: fmt.Completion | None = None
    resp: web.StreamResponse | None = None
    pending: list[tuple[int, Any]] = []  # events before the stream opened
    sent = [len(e) for e in ans.echo] if ans.echo else [0] * ans.n  # characters streamed per choice

    def chunks(i: int, ev: Any) -> list[dict]:
        out = fmt.chunks(c, i, ev, sent[i]) if c is not None else []
        if isinstance(ev, Text):
            sent[i] += len(ev.text)
        return out

    keepalive = node_of(request).settings.keepalive_seconds
    try:
        while not ans.finished:
            try:
                events = await ans.next(keepalive if resp is not None else None)
            except TimeoutError:
                # Waiting in the queue or reading a long prompt: keep proxies and clients from timing out.
                assert resp is not None
                await resp.write(sse.KEEPALIVE)
                continue
            out: list[bytes] = []
            for i, ev in events:
                if isinstance(ev, Failed):
                    err = ev.error()
                    if resp is None:
                        raise err
                    out.append(sse.data(err.body()))
                    await resp.write(b"".join(out))
                    return await sse.end(resp)
                tally.add(i, ev)
                if isinstance(ev, Text) and ev.text:
                    clock.token()
                if not gp.stream:
                    continue
                if resp is None:
                    pending.append((i, ev))
                    if not tally.all_started:
                        continue
                    c = _completion(kind, created, gp, tally)
                    resp = await sse.open_stream(request)
                    out += [sse.data(ch) for ch in fmt.opening_chunks(c, ans.n, ans.echo)]
                    out += [sse.data(ch) for j, e in pending for ch in chunks(j, e)]
                    pending.clear()
                else:
                    assert c is not None
                    out += [sse.data(ch) for ch in chunks(i, ev)]
            if out:
                assert resp is not None
                await resp.write(b"".join(out))
        if not gp.stream:
            body = fmt.body(_completion(kind, created, gp, tally), tally, ans.echo)
            _record_measured(node_of(request), tally, gp, ans, clock)
            return web.json_response(body)
        assert resp is not None and c is not None
        if gp.include_usage:
            await resp.write(sse.data(fmt.usage_chunk(c, tally.usage())))
        await resp.write(sse.DONE)
        _record_measured(node_of(request), tally, gp, ans, clock)
        return await sse.end(resp)
    finally:
        ans.cancel()  # no-op for finished choices; frees the slots (or peers) of a client that went away
        sink = request.get(USAGE_SINK)
        if sink is not None:  # a hosted entry node counts what the answer cost against the client's key
            sink(*tally.billed())


def _record_measured(node: Node, tally: fmt.Tally, gp: GenerationParams, ans: Answer, clock: AnswerClock) -> None:
    """A finished answer with its usage: one end-to-end sample for the catalog (runtime/stats.py), under
    the model that answered."""
    first = tally.first_started()
    model = first.model if first is not None and first.model else gp.model
    node.measured.record(model, clock.sample(tally.usage()["completion_tokens"], ans.n))


def _completion(kind: str, created: int, gp: GenerationParams, tally: fmt.Tally) -> fmt.Completion:
    first = tally.first_started()
    model = first.model if first is not None and first.model else gp.model
    tools = kind == "chat" and gp.tools is not None and gp.tools.active
    fingerprint = first.fingerprint if first else None
    return fmt.Completion.new(
        kind, created, model, fingerprint, gp.include_usage, tools, gp.sampling.logprobs is not None
    )


# -- embeddings -------------------------------------------------------------------------------------


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    node = node_of(request)
    body = await _read_body(request)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid(
            "'model' is required: name the model to use (GET /v1/models lists them).",
            "model",
            "missing_required_parameter",
        )
    items = parse_embedding_inputs(body)
    engine = await node.generation.engine_for(model.strip())
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

"""POST /v1/responses: the stateless Responses API on the chat completions generation path.

The request is translated (runtime/responses.py) into a chat completions request, checked and run by
the same code as /v1/chat/completions; the generation's events are told as a Response object, or as its
stream of events (``event: <type>`` + ``data: <json>``; the stream ends after the final event, with no
``[DONE]``, as OpenAI's does). Errors name the Responses field at fault."""

from __future__ import annotations

import json
import time

from aiohttp import web

from ..engine.events import DoneEvent, ErrorEvent, TokenEvent
from ..generation import Generation, prepare_chat
from ..responses import ResponseBuilder, responses_param, responses_usage, translate_request
from .errors import APIError, invalid
from .openai_routes import NODE_KEY, PUMP_KEY, engine_error
from .validation import parse_generation, parse_json_body, parse_messages

routes = web.RouteTableDef()


def _as_responses_error(e: APIError) -> APIError:
    """A chat-side error, renamed to the Responses field the client sent."""
    e.param = responses_param(e.param)
    return e


@routes.post("/v1/responses")
async def create_response(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    body = parse_json_body(await request.read())
    rr = translate_request(body)
    try:
        gp = parse_generation(rr.chat_body, None, None)
        parse_messages(rr.chat_body)
    except APIError as e:
        raise _as_responses_error(e) from None
    m = node.find(gp.model)
    mesh = node.mesh
    local = m is not None and m in node.manager.routable()
    if not local and mesh is not None and mesh.connected and mesh.candidates(gp.model, None):
        raise invalid(
            f"'{gp.model}' is served only by mesh peers here, and /v1/responses is answered only for models "
            f"this node serves; use /v1/chat/completions for it.",
            "model",
            "mesh_unsupported",
        )
    try:
        prep = await prepare_chat(node, rr.chat_body, gp)
    except APIError as e:
        raise _as_responses_error(e) from None
    gen = Generation(prep.engine, prep.prompts, prep.gp, request.app[PUMP_KEY])
    job = gen.jobs[0]
    builder = ResponseBuilder(prep.engine.id, rr.echo, int(time.time()))

    def usage(done: DoneEvent) -> dict:
        return responses_usage(job.prompt_tokens, done.completion_tokens, done.cached_tokens)

    gen.submit()
    try:
        if not rr.stream:
            while not gen.finished:
                _, ev = await gen.next(None)
                if isinstance(ev, TokenEvent):
                    builder.text(ev.text)
                elif isinstance(ev, DoneEvent):
                    job.done = ev
                    builder.finish(ev.finish_reason, usage(ev))
                elif isinstance(ev, ErrorEvent):
                    raise _as_responses_error(engine_error(ev))
            return web.json_response(builder.response())
        return await _stream(request, gen, builder, usage)
    finally:
        gen.cancel()  # no-op once finished; frees the slot of a client that went away


async def _stream(request: web.Request, gen: Generation, builder: ResponseBuilder, usage) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)

    async def send(events: list[dict]) -> None:
        if events:
            await resp.write(
                b"".join(
                    f"event: {ev['type']}\ndata: ".encode() + json.dumps(ev, separators=(",", ":")).encode() + b"\n\n"
                    for ev in events
                )
            )

    await send(builder.start())
    while not gen.finished:
        try:
            _, ev = await gen.next(node.settings.keepalive_seconds)
        except TimeoutError:
            await resp.write(b": keep-alive\n\n")  # waiting for a slot or reading a long prompt
            continue
        if isinstance(ev, TokenEvent):
            await send(builder.text(ev.text))
        elif isinstance(ev, DoneEvent):
            gen.jobs[0].done = ev
            await send(builder.finish(ev.finish_reason, usage(ev)))
        elif isinstance(ev, ErrorEvent):
            err = engine_error(ev)
            await send(builder.fail(err.message, "invalid_prompt" if ev.code == "invalid_grammar" else "server_error"))
            break
    await resp.write_eof()
    return resp

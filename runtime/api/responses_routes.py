"""POST /v1/responses: the stateless Responses API on the chat completions generation path.

The request is translated (runtime/responses.py) into a chat completions request, checked and answered
like one — on this node's engine or on a mesh peer (runtime/answers.py) — and the answer's events are
told as a Response object, or as its stream of named events (api/responses_format.py, framed by
api/sse.py; the stream ends after the final event, with no ``[DONE]``, as OpenAI's does). Errors name
the Responses field at fault."""

from __future__ import annotations

import time

from aiohttp import web

from ..answers import answer
from ..engine.events import Failed
from ..errors import NodeError
from ..generation import Answer
from ..responses import responses_param, translate_request
from ..validation import parse_generation, parse_json_body, parse_messages
from . import sse
from .context import USAGE_SINK, node_of
from .responses_format import ResponseBuilder, billed

routes = web.RouteTableDef()


def _renamed(e: NodeError) -> NodeError:
    """A chat-side error, naming the Responses field the client sent."""
    e.param = responses_param(e.param)
    return e


@routes.post("/v1/responses")
async def create_response(request: web.Request) -> web.StreamResponse:
    node = node_of(request)
    rr = translate_request(parse_json_body(await request.read()))
    try:
        gp = parse_generation(rr.chat_body, None, None)
        parse_messages(rr.chat_body)
        ans = await answer(node, "chat", rr.chat_body, gp)
    except NodeError as e:
        raise _renamed(e) from None
    builder = ResponseBuilder(gp.model, rr.echo, int(time.time()))
    try:
        if rr.stream:
            return await _stream(request, ans, builder)
        while not ans.finished:
            for _, ev in await ans.next(None):
                if isinstance(ev, Failed):
                    raise _renamed(ev.error())
                builder.feed(ev)
        return web.json_response(builder.response())
    finally:
        ans.cancel()  # no-op once finished; frees the slot (or peer) of a client that went away
        sink = request.get(USAGE_SINK)
        if sink is not None:  # a hosted entry node counts what the answer cost against the client's key
            sink(*billed(builder))


async def _stream(request: web.Request, ans: Answer, builder: ResponseBuilder) -> web.StreamResponse:
    """The stream opens (response.created) once the answer has started, as chat's does: a failure before
    that (a peer refusing, the node overloaded) is an HTTP error the SDKs understand, one after it a
    response.failed event."""
    keepalive = node_of(request).settings.keepalive_seconds
    resp: web.StreamResponse | None = None

    async def send(events: list[dict]) -> None:
        if events and resp is not None:
            await resp.write(b"".join(sse.event(ev["type"], ev) for ev in events))

    while not ans.finished:
        try:
            events = await ans.next(keepalive if resp is not None else None)
        except TimeoutError:
            if resp is not None:
                await resp.write(sse.KEEPALIVE)  # waiting for a slot, or reading a long prompt
            continue
        out: list[dict] = []
        for _, ev in events:
            if resp is None:
                if isinstance(ev, Failed):
                    raise _renamed(ev.error())
                resp = await sse.open_stream(request)
                out += builder.start()
            out += builder.feed(ev)
        await send(out)
        if builder.status == "failed":
            break
    assert resp is not None  # a finished answer has events
    return await sse.end(resp)

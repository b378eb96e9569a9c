"""Answering peers' requests: checked, limited by the owner's share settings, run on a local engine,
and streamed back sealed for the requester (tokens coalesced into fewer messages, heartbeats while
the engine is silent, cancellable by the requester)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import nats

from ..engine.events import Failed, Finished, Started, Text, ToolCallDelta
from ..errors import NodeError
from ..generation import Answer, Prepared
from ..validation import GenerationParams, parse_generation
from .config import MeshLimits
from .drops import Drops
from .identity import Identity
from .protocol import HEARTBEAT_INTERVAL, JunkRequest, check_request, ctl_subject, req_subject, seal, unseal
from .wire import ACK, HEARTBEAT, encode_failed, encode_finished, encode_started, encode_texts, encode_tool_call

log = logging.getLogger(__name__)

# A serving peer batches the tokens of this long into one message (the first goes at once). Every message
# wakes three processes (this node, the hub, the requester) that share the machine with the decode: at 40 ms
# an entry hop cost 0.935-0.977x of the direct tok/s on 2 cores, at 100 ms 1.009-1.024x (bench_entry --hop).
COALESCE_SECONDS = 0.1


class LocalModels(Protocol):
    """The node's models, as the mesh sees them: what it announces and whose slots it guards."""

    def routable(self) -> list: ...

    def get(self, model_id: str) -> Any: ...


class LocalGeneration(Protocol):
    """The node's generation pipeline (runtime.generation.GenerationService), as serving uses it."""

    async def prepare(self, kind: str, body: dict, gp: GenerationParams, continue_with: str = "") -> Prepared: ...

    def start(self, prep: Prepared, choices: int | None = None) -> Answer: ...


@dataclass
class Served:
    """A request from a peer running here."""

    rid: str
    key: bytes
    reply: str  # the signer's own inbox (checked by protocol.check_request)
    gen: Answer | None = None
    cancelled: bool = False
    last_sent: float = field(default_factory=time.monotonic)


class Serving:
    """The serving side of one node. ``changed`` is called when the number of requests running here
    changes (the announcement shows the room left)."""

    def __init__(
        self,
        ident: Identity,
        limits: Callable[[], MeshLimits],
        models: LocalModels,
        generation: LocalGeneration,
        connection: Callable[[], nats.NATS | None],
        changed: Callable[[], None],
    ) -> None:
        self.ident = ident
        self._limits = limits
        self.models = models
        self.generation = generation
        self._connection = connection
        self._changed = changed
        self.served: dict[str, Served] = {}
        self.served_total = 0  # mesh requests this node answered to the end
        self.dropped_requests = Drops("requests on this node's request subject")

    async def subscribe(self, nc: nats.NATS) -> None:
        """Listen on this node's request and control subjects (on every new connection)."""
        await nc.subscribe(req_subject(self.ident.public), cb=self.on_request)
        await nc.subscribe(ctl_subject(self.ident.public), cb=self.on_ctl)

    async def close(self) -> None:
        """Node shutdown: tell requesters to go elsewhere and stop the work."""
        for s in list(self.served.values()):
            await self._send(
                s, encode_failed(Failed("the serving node is shutting down", "node_shutting_down", 503, "server_error"))
            )
            if s.gen is not None:
                s.gen.cancel()

    async def _send(self, s: Served, m: dict) -> None:
        nc = self._connection()
        if nc is None:
            return
        s.last_sent = time.monotonic()
        with contextlib.suppress(Exception):
            await nc.publish(s.reply, seal(s.key, m))

    async def on_ctl(self, msg) -> None:
        rid = (msg.headers or {}).get("CM-Rid")
        s = self.served.get(rid or "")
        if s is None:
            return
        try:
            m = unseal(s.key, msg.data)
        except ValueError:
            return  # not from the requester
        if m.get("t") == "cancel" and m.get("rid") == rid:
            s.cancelled = True
            if s.gen is not None:
                s.gen.cancel()

    async def on_request(self, msg) -> None:
        """A request from a peer. Answered only when it is signed and its reply subject is the signer's
        own inbox: otherwise a member could make this node write wherever it can write (its own
        directory entry, JetStream API subjects) by naming that as the reply subject (issue 10).
        Junk is dropped before any work, counted, and logged at most once a minute."""
        if not msg.data:
            return  # a requester's liveness probe: being subscribed is the answer
        try:
            signer, req, key = check_request(self.ident, msg.reply, msg.headers, msg.data)
        except JunkRequest as e:
            self.dropped_requests.drop(e.reason, str(e))
            return
        if req["rid"] in self.served:
            self.dropped_requests.drop("replayed", f"a second request {req['rid']} from {signer}")
            return
        s = Served(req["rid"], key, msg.reply)
        asyncio.get_running_loop().create_task(self._serve(s, req))

    async def _serve(self, s: Served, req: dict) -> None:
        def refuse(status: int, message: str, code: str) -> dict:
            return encode_failed(Failed(message, code, status, "server_error"))

        lim = self._limits()
        if len(self.served) >= lim.max_concurrent:
            await self._send(
                s, refuse(503, "this peer is serving as many mesh requests as its owner allows", "peer_busy")
            )
            return
        self.served[s.rid] = s
        self._changed()
        await self._send(s, ACK)
        beat = asyncio.get_running_loop().create_task(self._heartbeat(s))
        try:
            kind, body, prefix = req.get("kind"), dict(req.get("body") or {}), str(req.get("prefix") or "")
            body["n"] = 1
            body.pop("stream", None)
            body.pop("stream_options", None)
            try:
                endpoint = "completion" if kind == "completion" else "chat"
                gp = parse_generation(body, None, 16 if kind == "completion" else None, endpoint)
                if gp.max_tokens is not None and gp.max_tokens > lim.max_tokens:
                    await self._send(
                        s,
                        refuse(403, f"this peer serves at most {lim.max_tokens} tokens per mesh request", "mesh_limit"),
                    )
                    return
                m = self.models.get(gp.model)
                e = m.engine if m is not None else None
                if e is not None:
                    c = e.counts()
                    if (
                        c["slots"] - c["slots_busy"] <= lim.reserved_local_slots
                        and c["slots"] > lim.reserved_local_slots
                    ):
                        await self._send(s, refuse(503, "this peer's free slots are kept for its own use", "peer_busy"))
                        return
                prep = await self.generation.prepare(str(kind), body, gp, prefix)
                if prep.gp.max_tokens is None:
                    # No max_tokens from the client: as on a local request, up to the end of the context,
                    # and no more than this peer gives a mesh request (never a refusal for the default).
                    prep.gp = replace(prep.gp, max_tokens=lim.max_tokens)
                if s.cancelled:
                    return
                gen = s.gen = self.generation.start(prep, choices=1)
            except NodeError as err:
                await self._send(s, encode_failed(Failed.of(err)))
                return
            n = 0
            pieces: list[Text] = []
            flush_at = 0.0  # the first token goes out at once; later ones in batches (fewer messages)
            while not gen.finished and not s.cancelled:
                timeout = None if not pieces else max(0.0, flush_at - time.monotonic())
                try:
                    events = await gen.next(timeout)
                except TimeoutError:
                    events = []
                for _, ev in events:
                    if isinstance(ev, Started):
                        await self._send(s, encode_started(ev))
                    elif isinstance(ev, Text):
                        n += 1
                        pieces.append(ev)
                        if n > 1 and len(pieces) == 1:
                            flush_at = time.monotonic() + COALESCE_SECONDS
                    elif isinstance(ev, ToolCallDelta):  # parsed here: only this node has the template
                        if pieces:
                            await self._send(s, encode_texts(pieces, n))
                            pieces = []
                        await self._send(s, encode_tool_call(ev))
                    elif isinstance(ev, Finished):
                        if pieces:
                            await self._send(s, encode_texts(pieces, n))
                            pieces = []
                        self.served_total += 1
                        await self._send(s, encode_finished(ev))
                    elif isinstance(ev, Failed):
                        if pieces:
                            await self._send(s, encode_texts(pieces, n))
                            pieces = []
                        # engine_crashed: this request may be what crashed the engine; 500, and the
                        # requester will not try it on another peer (events.FINAL_CODES)
                        await self._send(s, encode_failed(ev))
                        return
                if pieces and (n == 1 or time.monotonic() >= flush_at):
                    await self._send(s, encode_texts(pieces, n))
                    pieces = []
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("mesh request failed")
            await self._send(s, refuse(500, f"the peer failed: {e}", "internal_error"))
        finally:
            beat.cancel()
            if s.gen is not None:
                s.gen.cancel()
            self.served.pop(s.rid, None)
            self._changed()

    async def _heartbeat(self, s: Served) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL / 2)
            if time.monotonic() - s.last_sent >= HEARTBEAT_INTERVAL:
                await self._send(s, HEARTBEAT)

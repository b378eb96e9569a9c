"""Sending a request to the mesh: choosing peers, calling them over a ``PeerLink``, and failing over.

When a peer is lost mid-answer, the request goes to the next peer with the partial answer as the
prefix to continue and ``max_tokens`` reduced by what was produced, so the client sees one unbroken
answer and usage that adds both legs. When every peer is busy, the request waits for room (up to
``BUSY_WAIT_SECONDS``). A bad request (4xx) and a final error (the request may have crashed the peer's
engine) end here: sending them elsewhere would only repeat the failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from collections.abc import Set as AbstractSet

from ..engine.events import FINAL_CODES, Failed, Finished, GenEvent, Started, ToolCallDelta
from ..errors import NodeError
from .directory import Directory, Peer
from .link import PeerBusy, PeerLink, PeerLost
from .protocol import LIVENESS_TIMEOUT
from .router import rank_peers, with_feature
from .wire import Texts, decode

log = logging.getLogger(__name__)

BUSY_WAIT_SECONDS = 120.0  # how long a request waits for room when every peer is busy

# Errors after which another peer is tried; anything else is the client's to see.
_RETRYABLE_CODES = {
    "peer_busy",
    "mesh_limit",
    "model_not_found",
    "model_load_failed",
    "engine_stopped",
    "node_shutting_down",
    "overloaded",
    "server_error",
    "internal_error",
    "model_not_ready",
}
# FINAL_CODES (events.py) end the request here whatever their status: the request may be what crashed the
# serving peer's engine, so sending it (or the rest of it) to the next peer could crash that one too, and
# so on through the whole mesh. The client gets the error (500, x-should-retry: false).


class MeshUnavailable(NodeError):
    """No peer could take (or finish) the request."""

    def __init__(self, message: str, started: bool) -> None:
        super().__init__(message, status=503, code="mesh_unavailable", retry_after=5)
        self.started = started


class RemoteError(NodeError):
    """The peer refused the request for a reason that another peer would share (a bad request), or
    failed in a way that must not be tried elsewhere (``FINAL_CODES``)."""

    def __init__(self, failed: Failed) -> None:
        e = failed.error()
        super().__init__(
            e.message,
            status=e.status,
            code=e.code,
            type=e.type,
            param=e.param,
            retry_after=e.retry_after,
            retryable=e.retryable,
        )

    @property
    def error(self) -> dict:
        return self.body()["error"]


class Requester:
    """This node's requests to peers. ``in_flight`` counts the requests running on each peer (ranking
    trusts it over the peers' announcements, which are a few seconds old)."""

    def __init__(
        self,
        directory: Directory,
        link: PeerLink,
        connected: Callable[[], bool],
        busy_wait_seconds: float = BUSY_WAIT_SECONDS,
    ) -> None:
        self.directory = directory
        self.link = link
        self._connected = connected
        self.busy_wait_seconds = busy_wait_seconds
        self.in_flight: dict[str, int] = {}

    def candidates(self, model_id: str, max_tokens: int | None, exclude: AbstractSet[str] = frozenset()) -> list[Peer]:
        if not self._connected():
            return []
        return rank_peers(list(self.directory.peers.values()), model_id, self.in_flight, max_tokens, set(exclude))

    def peer_has_room(self, peer: Peer, model_id: str) -> bool:
        m = peer.model(model_id) or {}
        free = m.get("free_slots")
        return (free if isinstance(free, int) else 1) - self.in_flight.get(peer.id, 0) > 0

    async def generate(
        self, kind: str, body: dict, model_id: str, max_tokens: int | None, first: list[Peer]
    ) -> AsyncIterator[GenEvent]:
        """Run one choice on the mesh: Started (once, the first leg's), Text (one per token), tool-call
        deltas, then Finished with the usage of every leg. Fails over to the next peer when one is lost
        or refuses, carrying the partial answer along so the client sees one unbroken answer. Raises
        ``RemoteError`` (the client's to see) or ``MeshUnavailable`` (no peer could start or finish it)."""
        text = ""
        tokens_before = 0
        prompt_tokens: int | None = None
        tried: set[str] = set()
        queue = list(first)
        started = False
        last_error = "no peer serves this model"
        busy: set[str] = set()
        busy_deadline = time.monotonic() + self.busy_wait_seconds
        pause = 0.02  # a slot freed a moment ago is often the one we wait for
        # A request with tools continues only on peers that can serve it (they render and parse the calls).
        needs_tools = bool(body.get("tools")) and body.get("tool_choice") != "none"
        while True:
            if not queue:
                queue = self.candidates(model_id, None if max_tokens is None else max_tokens - tokens_before, tried)
                if needs_tools:
                    queue = with_feature(queue, "tools")
            if not queue and busy and time.monotonic() < busy_deadline:
                # Every peer that is still there is busy: wait for room instead of failing the request.
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                tried -= busy
                busy.clear()
                continue
            if not queue:
                where = "every peer serving it was lost" if tried else "no live peer serves it"
                raise MeshUnavailable(
                    f"The answer from the mesh could not be {'finished' if started else 'started'}: "
                    f"{where} ({last_error}).",
                    started,
                )
            peer = queue.pop(0)
            if peer.id in tried:
                continue
            tried.add(peer.id)
            remaining = None if max_tokens is None else max_tokens - tokens_before
            if remaining is not None and remaining <= 0:
                yield Finished("length", prompt_tokens or 0, tokens_before)
                return
            req_body = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "n")}
            if remaining is not None:
                req_body["max_tokens"] = remaining
                req_body.pop("max_completion_tokens", None)
            peer_tokens = 0
            calls: list[ToolCallDelta] = []  # a leg's tool calls, handed on with its end: never half a set
            try:
                async for ev in self._call(peer, kind, req_body, text):
                    if isinstance(ev, Started):
                        if prompt_tokens is None:
                            prompt_tokens = ev.prompt_tokens
                            yield Started(prompt_tokens, ev.model or model_id, ev.fingerprint)
                    elif isinstance(ev, Texts):
                        started = True
                        peer_tokens = ev.produced
                        for t in ev.items:
                            text += t.text
                            yield t
                    elif isinstance(ev, ToolCallDelta):
                        started = True
                        calls.append(ev)
                    elif isinstance(ev, Finished):
                        for c in calls:
                            yield c
                        yield Finished(
                            ev.finish_reason,
                            prompt_tokens or ev.prompt_tokens,
                            tokens_before + ev.completion_tokens,
                            ev.cached_tokens if not tokens_before else 0,
                        )
                        return
            except PeerBusy as e:
                last_error = str(e)
                busy.add(peer.id)
                continue
            except PeerLost as e:
                last_error = str(e)
                log.info(
                    "mesh: peer %s lost (%s)%s",
                    peer.name,
                    e,
                    f"; continuing the answer elsewhere after {len(text)} characters" if started else "",
                )
                tokens_before += peer_tokens
                continue

    async def _call(
        self, peer: Peer, kind: str, body: dict, prefix: str
    ) -> AsyncIterator[Started | Texts | ToolCallDelta | Finished]:
        """One peer's answer, decoded (wire.py). Raises ``PeerBusy``/``PeerLost`` (try another peer) or
        ``RemoteError`` (the client's to see)."""
        t0 = time.monotonic()
        call = await self.link.start(peer, kind, body, prefix)
        self.in_flight[peer.id] = self.in_flight.get(peer.id, 0) + 1
        finished = False
        try:
            probed = False
            last_ok = time.monotonic()  # the last message that really came from the peer
            while True:
                # Half the liveness window in silence: probe (a gone peer is reported at once), then the
                # rest of the window. Only authentic messages count as signs of life: a flood of forged
                # ones cannot keep a dead request waiting.
                wait = last_ok + (LIVENESS_TIMEOUT if probed else LIVENESS_TIMEOUT / 2) - time.monotonic()
                try:
                    m = await call.receive(max(wait, 0.001))
                except TimeoutError:
                    if not probed:
                        probed = True
                        await call.probe()
                        continue
                    raise PeerLost(f"no word from {peer.name} for {LIVENESS_TIMEOUT:.0f} s") from None
                last_ok = time.monotonic()
                probed = False
                ev = decode(m)
                if ev is None or ev == "hb":
                    continue
                if ev == "ack":
                    lat = (time.monotonic() - t0) * 1000
                    peer.latency_ms = lat if peer.latency_ms is None else 0.8 * peer.latency_ms + 0.2 * lat
                    continue
                if isinstance(ev, Failed):
                    if ev.code == "peer_busy":
                        finished = True
                        raise PeerBusy(f"{peer.name} is busy")
                    if ev.code in FINAL_CODES:
                        finished = True
                        log.warning("mesh: %s: %s; not trying another peer with this request", peer.name, ev.message)
                        raise RemoteError(ev)
                    if (ev.status or 500) >= 500 or ev.code in _RETRYABLE_CODES:
                        raise PeerLost(f"{peer.name}: {ev.message}")
                    finished = True
                    raise RemoteError(ev)
                assert not isinstance(ev, str)
                yield ev
                if isinstance(ev, Finished):
                    finished = True
                    return
        finally:
            self.in_flight[peer.id] = max(0, self.in_flight.get(peer.id, 1) - 1)
            # Not finished: the client went away or the peer was given up on; stop the work over there.
            await call.close(cancel=not finished)

"""One call to one peer: the seam between the requester's failover logic and the wire.

The requester (requester.py) decides what a message means: which errors send the request to another
peer, when silence means a peer is lost, how a lost answer continues elsewhere. A ``PeerLink`` only
carries one request to one peer and its answer back. ``NatsLink`` is the real one (sealed requests on
``cm.n.<peer>.req``, answers on this node's own inbox); unit tests script a fake one, so the failover
logic is tested in milliseconds without a NATS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import nats
from nats.errors import Error as NatsError

from .directory import Peer
from .identity import Identity
from .protocol import PROTOCOL_VERSION, ctl_subject, req_subject, request_headers, seal, seal_request, unseal

log = logging.getLogger(__name__)


class PeerLost(Exception):
    """The peer stopped answering (or said it cannot serve): try another."""


class PeerBusy(PeerLost):
    """The peer is alive but has no room for a mesh request now."""


class PeerCall(Protocol):
    """A request sent to one peer, and its answer as it arrives."""

    async def receive(self, timeout: float) -> dict:
        """The next authentic message from the peer. Raises ``asyncio.TimeoutError`` when ``timeout``
        seconds pass without one (forged or damaged messages do not count), ``PeerLost`` when the peer
        is not there at all (nobody listens on its subject) or the connection fails."""
        ...

    async def probe(self) -> None:
        """Ask whether the peer is still there: a gone peer makes the next ``receive`` raise ``PeerLost``
        at once; a live one ignores the probe."""
        ...

    async def close(self, cancel: bool) -> None:
        """Stop listening; with ``cancel``, also tell the peer to stop the work (the client went away or
        the peer was given up on)."""
        ...


class PeerLink(Protocol):
    """Starts calls to peers."""

    async def start(self, peer: Peer, kind: str, body: dict, prefix: str) -> PeerCall:
        """Send one request (``kind`` "chat" or "completion", the OpenAI ``body``, and ``prefix``: the part
        of the answer already produced elsewhere, which the peer continues)."""
        ...


class NatsLink:
    """The mesh's link: a request sealed for the peer's key and signed with this node's, sent to the
    peer's request subject; the peer answers, sealed, on an inbox only this node can subscribe to."""

    def __init__(self, connection: Callable[[], nats.NATS | None], ident: Identity) -> None:
        self._connection = connection
        self.ident = ident

    async def start(self, peer: Peer, kind: str, body: dict, prefix: str) -> NatsCall:
        nc = self._connection()
        if nc is None or not nc.is_connected:
            raise PeerLost("this node is not connected to the mesh")
        rid = uuid.uuid4().hex
        sealed, key = seal_request(
            peer.id,
            {
                "v": PROTOCOL_VERSION,
                "rid": rid,
                "kind": kind,
                "body": body,
                "prefix": prefix,
                "from": self.ident.public,
            },
        )
        inbox = nc.new_inbox()  # _I.<this node>.…: the only place the peer will answer
        sub = await nc.subscribe(inbox, pending_msgs_limit=-1)
        call = NatsCall(nc, peer, rid, key, inbox, sub)
        try:
            await nc.publish(
                req_subject(peer.id), sealed, reply=inbox, headers=request_headers(self.ident, inbox, sealed, rid)
            )
        except BaseException:
            await call.close(cancel=True)
            raise
        return call


class NatsCall:
    def __init__(self, nc: nats.NATS, peer: Peer, rid: str, key: bytes, inbox: str, sub) -> None:
        self.nc, self.peer, self.rid, self.key, self.inbox, self.sub = nc, peer, rid, key, inbox, sub
        self._forged = 0

    async def receive(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = await self.sub.next_msg(timeout=max(deadline - time.monotonic(), 0.001))
            except (TimeoutError, NatsError) as e:
                if isinstance(e, asyncio.TimeoutError) or "timeout" in str(e).lower():
                    raise TimeoutError() from None
                raise PeerLost(str(e)) from None
            if msg.headers and msg.headers.get("Status") == "503":
                raise PeerLost(f"{self.peer.name} is not listening (it left or crashed)")
            try:
                return unseal(self.key, msg.data)
            except ValueError:
                self._forged += 1
                if self._forged == 1:
                    log.warning("mesh: dropping replies that are not from %s (forged or damaged)", self.peer.name)

    async def probe(self) -> None:
        # A peer whose process is gone has no subscription left, so NATS answers "no responders" at
        # once; a live one ignores the empty probe.
        await self.nc.publish(req_subject(self.peer.id), b"", reply=self.inbox)

    async def close(self, cancel: bool) -> None:
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()
        if cancel and self.nc.is_connected:
            with contextlib.suppress(Exception):
                await self.nc.publish(
                    ctl_subject(self.peer.id),
                    seal(self.key, {"t": "cancel", "rid": self.rid}),
                    headers={"CM-Rid": self.rid},
                )

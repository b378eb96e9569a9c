"""The node's membership of a mesh: connection, join/leave, its own announcement, the directory
watcher, serving requests from peers and sending requests to them.

One ``Mesh`` per node. It runs on the node's event loop; the HTTP layer (runtime/api/mesh_routes.py)
and the app use its public methods and the status it reports.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import nats
from nats.errors import Error as NatsError
from nats.js.api import KeyValueConfig, StorageType

from .. import __version__
from ..api.errors import APIError
from ..api.validation import parse_generation
from ..engine.events import DoneEvent, ErrorEvent, TokenEvent
from ..generation import Generation, LoopPump, prepare_chat, prepare_completion
from .directory import Directory, Peer
from .drops import Drops
from .identity import Identity, load_or_create, verify
from .protocol import (ANNOUNCE_TTL, BUCKET, DIRECTORY_SUBJECT, FEATURES, HEARTBEAT_INTERVAL, JOIN_SUBJECT,
                       LIVENESS_TIMEOUT, PROTOCOL_VERSION, REFRESH_INTERVAL, BadInvite, JunkRequest, announce_subject,
                       canonical, check_request, ctl_subject, decode_invite, inbox_prefix, join_request, req_subject,
                       request_headers, seal, seal_request, sign_announcement, unseal)
from .router import rank_peers
from .tls import client_context
from .watch import DirectoryWatch

log = logging.getLogger(__name__)

OFF, CONNECTING, JOINED, RECONNECTING, ERROR = "off", "connecting", "joined", "reconnecting", "error"


class MeshError(RuntimeError):
    """A join or leave that failed, in words for the user. ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 502, code: str = "mesh_unavailable") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class MeshLimits:
    """What this node gives the mesh (the user sets these)."""

    max_tokens: int = 2048  # per mesh request
    max_concurrent: int = 4  # mesh requests running here at once
    reserved_local_slots: int = 1  # slots per model that mesh requests never take

    def update(self, d: dict) -> "MeshLimits":
        out = MeshLimits(**asdict(self))
        for k in ("max_tokens", "max_concurrent", "reserved_local_slots"):
            if k in d:
                v = d[k]
                lo = 0 if k == "reserved_local_slots" else 1
                if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                    raise ValueError(f"'{k}' must be an integer of at least {lo}")
                setattr(out, k, v)
        return out


@dataclass
class MeshConfig:
    """Persisted in config/mesh.json so a joined node rejoins after a restart."""

    joined: bool = False
    mode: str = "open"  # "hub": authenticated with this node's key; "open": a NATS URL without auth
    urls: list[str] = field(default_factory=list)
    name: str = ""
    limits: MeshLimits = field(default_factory=MeshLimits)
    tls: str | None = None  # a private hub's certificate (base64 DER), pinned

    @classmethod
    def load(cls, path: Path) -> "MeshConfig":
        if not path.exists():
            return cls()
        try:
            d = json.loads(path.read_text())
            return cls(bool(d.get("joined")), d.get("mode", "open"), list(d.get("urls", [])), d.get("name", ""),
                       MeshLimits().update(d.get("limits", {})), d.get("tls"))
        except (ValueError, TypeError) as e:
            log.error("ignoring a damaged %s: %s", path, e)
            return cls()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)


@dataclass
class Served:
    """A request from a peer running here."""

    rid: str
    key: bytes
    reply: str  # the signer's own inbox (checked by protocol.check_request)
    gen: Any = None
    cancelled: bool = False
    last_sent: float = field(default_factory=time.monotonic)


class PeerLost(Exception):
    """The peer stopped answering (or said it cannot serve): try another."""


class PeerBusy(PeerLost):
    """The peer is alive but has no room for a mesh request now."""


BUSY_WAIT_SECONDS = 120.0  # how long a request waits for room when every peer is busy
COALESCE_SECONDS = 0.04  # a serving peer batches the tokens of this long into one message
SAVED = "(the saved mesh)"  # join() target: the mesh this node was last in


class MeshUnavailable(Exception):
    """No peer could take (or finish) the request."""

    def __init__(self, message: str, started: bool) -> None:
        super().__init__(message)
        self.started = started


class RemoteError(Exception):
    """The peer refused the request for a reason that another peer would share (a bad request)."""

    def __init__(self, status: int, error: dict) -> None:
        super().__init__(error.get("message", "error"))
        self.status = status
        self.error = error


# Errors after which another peer is tried; anything else is the client's to see.
_RETRYABLE_CODES = {"peer_busy", "mesh_limit", "model_not_found", "model_load_failed", "engine_stopped",
                    "node_shutting_down", "overloaded", "server_error", "internal_error", "model_not_ready"}
# Errors that end the request here whatever their status: the request may be what crashed the serving
# peer's engine, so sending it (or the rest of it) to the next peer could crash that one too, and so on
# through the whole mesh. The client gets the error (500, x-should-retry: false).
FINAL_CODES = {"engine_crashed"}


class Mesh:
    def __init__(self, node, config_dir: Path) -> None:
        self.node = node
        self.config_path = config_dir / "mesh.json"
        self.config = MeshConfig.load(self.config_path)
        self.ident: Identity = load_or_create(f"mesh-node-{node.id}", config_dir / "mesh-node.seed")
        if not self.config.name:
            self.config.name = socket.gethostname()[:48] or self.ident.public[:8]
        self.directory = Directory(self.ident.public)
        self.state = OFF
        self.error: str | None = None
        self.nc: nats.NATS | None = None
        self.kv = None
        self._tasks: list[asyncio.Task] = []
        self._poke = asyncio.Event()
        self._served: dict[str, Served] = {}
        self.dropped_requests = Drops("requests on this node's request subject")
        self._watch: DirectoryWatch | None = None
        self.served_total = 0  # mesh requests this node answered to the end
        self.in_flight: dict[str, int] = {}  # requests this node has running on each peer
        self._last_announcement: bytes | None = None
        self._pump = None
        self._closing = False
        self._join_lock = asyncio.Lock()

    # -- status ---------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state == JOINED and self.nc is not None and self.nc.is_connected

    def status(self, with_peers: bool = True) -> dict:
        d = {
            "state": self.state,
            "url": self.nc.connected_url.geturl() if self.nc is not None and self.nc.connected_url and self.nc.is_connected
            else (self.config.urls[0] if self.config.urls else None),
            "urls": list(self.config.urls),
            "mode": self.config.mode if self.config.joined else None,
            "error": self.error,
            "node": {"id": self.ident.public, "name": self.config.name},
            "hub": self._hub_status(),
            "limits": asdict(self.config.limits),
            "serving_mesh_requests": len(self._served),
            "served_total": self.served_total,
            "peer_count": len(self.directory.peers),
            "protocol": PROTOCOL_VERSION,
            "features": list(FEATURES),
            # announcements that failed their signature or field checks (never routed to, never listed)
            "rejected_announcements": self.directory.rejected,
            "rejected_announcement_reason": self.directory.drops.last_reason,
            # junk on this node's request subject (unsigned, bad signature, undecryptable, oversized, …)
            "dropped_requests": self.dropped_requests.total,
            "dropped_requests_by_reason": dict(self.dropped_requests.by_reason),
            "dropped_request_reason": self.dropped_requests.last_reason,
        }
        if with_peers:
            d["peers"] = self.directory.public()
        return d

    def _hub_status(self) -> dict | None:
        hub = self.node.hub
        if hub is None:
            return None
        d: dict[str, Any] = {"urls": list(hub.urls)}
        if hub.relay is not None:  # members' announcements the hub refused to write (invalid, too often)
            d["rejected_announcements"] = hub.relay.drops.total
            d["rejected_announcement_reason"] = hub.relay.drops.last_reason
        return d

    def _set_state(self, state: str, error: str | None = None) -> None:
        if state == self.state and error == self.error:
            return
        self.state, self.error = state, error
        log.info("mesh: %s%s", state, f" ({error})" if error else "")
        self.node._broadcast(dict(self.status(with_peers=False), type="mesh"))

    def _peers_changed(self) -> None:
        self.node._broadcast({"type": "peers", "peers": self.directory.public()})

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """At node start: rejoin the mesh this node was part of (in the background)."""
        if self.config.joined and self.config.urls and self.nc is None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._rejoin(), name="rejoin"))

    async def connect_saved(self) -> None:
        """Connect now to the saved mesh (this node's own hub, at start)."""
        self._set_state(CONNECTING)
        await self._connect(self.config.urls, self.config.mode, self.config.tls)

    async def _rejoin(self) -> None:
        delay = 1.0
        self._set_state(CONNECTING)
        while not self._closing and self.config.joined:
            try:
                await self._connect(self.config.urls, self.config.mode, self.config.tls)
                return
            except MeshError as e:
                self._set_state(RECONNECTING, f"{e}; retrying in {delay:.0f} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def join(self, target: str, name: str | None = None) -> dict:
        """Join a mesh: an invite token (private hub) or a NATS URL (an open or public mesh)."""
        target = (target or "").strip()
        if not target and self.config.urls and self.config.mode == "hub":
            target = SAVED  # rejoin the hub this node is a member of: no new invite needed
        elif not target and self.config.urls:
            target = ",".join(self.config.urls)
        if not target:
            raise MeshError("give an invite (cmi1.…) or a mesh URL (nats://host:4222)", 400, "invalid_invite")
        async with self._join_lock:
            for t in self._tasks:
                if t.get_name() == "rejoin":
                    t.cancel()  # the user's choice replaces a background retry of the saved mesh
            if name:
                self.config.name = name[:64]
            if self.nc is None:
                self._set_state(CONNECTING)
            try:
                # Work out where to go first: a bad or used invite leaves a current membership alone.
                if target is SAVED:
                    urls, mode, cert = list(self.config.urls), "hub", self.config.tls
                elif "://" in target:
                    urls, mode, cert = [u.strip() for u in target.split(",") if u.strip()], "open", None
                else:
                    try:
                        invite = decode_invite(target)
                    except BadInvite as e:
                        raise MeshError(str(e), 400, "invalid_invite") from None
                    urls, mode, cert = await self._redeem(invite), "hub", invite.cert
            except MeshError as e:
                if self.nc is None:
                    self._set_state(OFF, str(e))
                raise
            if self.nc is not None:
                await self._disconnect(delete_entry=True)
            self._set_state(CONNECTING)
            try:
                await self._connect(urls, mode, cert)
            except MeshError as e:
                # Not in any mesh now (a previous one was left above): say why, in the state too.
                self.config.joined = False
                self.config.save(self.config_path)
                self._set_state(OFF, str(e))
                raise
            self.config.joined, self.config.urls, self.config.mode, self.config.tls = True, urls, mode, cert
            self.config.save(self.config_path)
            return self.status()

    async def leave(self) -> dict:
        async with self._join_lock:
            self.config.joined = False
            self.config.save(self.config_path)
            for t in self._tasks:
                if t.get_name() == "rejoin":
                    t.cancel()
            await self._disconnect(delete_entry=True)
            self._set_state(OFF)
            return self.status()

    def set_limits(self, changes: dict) -> dict:
        try:
            self.config.limits = self.config.limits.update(changes)
        except ValueError as e:
            raise MeshError(str(e), 400, "invalid_limits") from None
        self.config.save(self.config_path)
        self.poke()
        return self.status()

    async def close(self) -> None:
        """Node shutdown: tell requesters to go elsewhere, leave the directory at once, keep the joined
        setting so the node rejoins at its next start."""
        self._closing = True
        for s in list(self._served.values()):
            await self._send(s, {"t": "err", "status": 503, "error": {
                "message": "the serving node is shutting down", "type": "server_error", "code": "node_shutting_down"}})
            if s.gen is not None:
                s.gen.cancel()
        for t in self._tasks:
            t.cancel()
        await self._disconnect(delete_entry=True)

    # -- joining --------------------------------------------------------------------------------------

    async def _redeem(self, invite) -> list[str]:
        """Trade an invite for membership: the hub adds this node's key and answers with its addresses."""
        if invite.expires_at < time.time():
            raise MeshError("this invite has expired; ask the hub's owner for a new one (closedmesh mesh invite)",
                            400, "invite_expired")
        nc = None
        for attempt in range(3):
            try:
                nc = await nats.connect(list(invite.urls), nkeys_seed_str=invite.seed,
                                        inbox_prefix=f"_I.{invite.public}",
                                        tls=client_context(invite.cert) if invite.cert else None,
                                        allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=1,
                                        error_cb=_quiet, name="closedmesh-join")
                break
            except Exception as e:
                err = _connect_error(e, invite.urls, invite=True)
                # A connection dropped while the hub reloads its configuration is worth another try; a
                # refused invite or an unreachable hub is not. Give up when: not a connection problem, OR
                # a connection problem that is not a dropped connection (neither "reset" nor "lost"), OR
                # the last attempt. (`and` binds tighter than `or`: this is what the code always meant.)
                text = str(e).lower()
                dropped = "reset" in text or "lost" in text
                if err.code != "hub_unreachable" or not dropped or attempt == 2:
                    raise err from None
                await asyncio.sleep(0.3)
        assert nc is not None
        try:
            msg = await nc.request(JOIN_SUBJECT, join_request(invite, self.ident, self.config.name), timeout=10)
        except Exception as e:
            raise MeshError(f"the hub did not answer the join request ({type(e).__name__}); try again", 502,
                            "hub_unavailable") from None
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
        try:
            doc = json.loads(msg.data)
            result = doc["r"]
            ok = verify(invite.hub, canonical(result), base64.b64decode(doc["sig"]))
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise MeshError("the answer to the join request was not signed by the hub named in the invite; "
                            "not joining", 502, "hub_impostor")
        if not result.get("ok"):
            raise MeshError(f"the hub refused: {result.get('error', 'no reason given')}", 403, "join_refused")
        return list(invite.urls)

    async def _connect(self, urls: list[str], mode: str, cert: str | None = None) -> None:
        opts: dict[str, Any] = dict(
            servers=urls, name=f"closedmesh {self.config.name}", inbox_prefix=inbox_prefix(self.ident.public),
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=3,
            ping_interval=5, max_outstanding_pings=2, error_cb=self._on_error,
            disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected)
        if mode == "hub":
            opts["nkeys_seed_str"] = self.ident.seed
        if cert:
            opts["tls"] = client_context(cert)
        nc = None
        # Right after a join the hub is reloading its configuration: the first attempts may be refused.
        deadline = time.monotonic() + (8 if mode == "hub" and self.state == CONNECTING else 0)
        while True:
            try:
                # (max_reconnect_attempts < 0 would make nats-py retry an unreachable server forever)
                nc = await nats.connect(**dict(opts, allow_reconnect=False, max_reconnect_attempts=1))
                break
            except Exception as e:
                err = _connect_error(e, urls, invite=False)
                # (a reload may also drop a connection that was just made)
                if time.monotonic() >= deadline:
                    raise err from None
                await asyncio.sleep(0.25)
        # Reconnect from here on: nats-py keeps trying with our callbacks (a fresh client with the
        # same options, now that the first connection is proven).
        await nc.close()
        try:
            nc = await asyncio.wait_for(nats.connect(**opts), 15)
            kv = None
            if mode == "hub":
                # The hub writes the directory for its members (members have no JetStream rights): it
                # must answer directory requests.
                try:
                    await nc.request(DIRECTORY_SUBJECT, b"", timeout=5)
                except Exception:
                    raise MeshError("the hub does not answer directory requests (is it a ClosedMesh hub of "
                                    "this version?)", 502, "no_directory") from None
            else:
                js = nc.jetstream()
                try:
                    kv = await js.key_value(BUCKET)
                except Exception:
                    kv = await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1, ttl=ANNOUNCE_TTL * 2,
                                                                  storage=StorageType.FILE))
            await nc.subscribe(req_subject(self.ident.public), cb=self._on_request)
            await nc.subscribe(ctl_subject(self.ident.public), cb=self._on_ctl)
            await nc.flush(timeout=5)
        except MeshError:
            await nc.close()
            raise
        except Exception as e:
            with contextlib.suppress(Exception):
                await nc.close()
            raise MeshError(f"connected to {urls[0]} but could not set up the mesh there: {e}", 502,
                            "mesh_setup_failed") from None
        self.nc, self.kv = nc, kv
        self._watch = DirectoryWatch(nc, self.directory, lambda keys: self._peers_changed(), hub=kv is None)
        self._last_announcement = None
        loop = asyncio.get_running_loop()
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks += [loop.create_task(self._announcer(), name="announcer"),
                        loop.create_task(self._watcher(), name="watcher"),
                        loop.create_task(self._expirer(), name="expirer")]
        self._set_state(JOINED)
        self.poke()  # announce now, not at the next refresh

    async def _disconnect(self, delete_entry: bool) -> None:
        for t in self._tasks:
            if t.get_name() in ("announcer", "watcher", "expirer"):
                t.cancel()
        self._watch = None  # its subscription goes with the connection
        nc, self.nc = self.nc, None
        if nc is None:
            return
        if delete_entry and nc.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._write_entry(nc, self.kv, None), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), 3)
        with contextlib.suppress(Exception):
            await nc.close()
        self.kv = None
        if self.directory.peers:
            self.directory.peers.clear()
            self._peers_changed()

    # -- connection callbacks ---------------------------------------------------------------------------

    async def _on_error(self, e: Exception) -> None:
        text = str(e)
        if "authorization violation" in text.lower() and self.nc is not None:
            self._set_state(ERROR, "the hub no longer accepts this node (it was removed from the mesh, or the hub "
                                   "was reset); ask for a new invite")
        elif "permissions violation" in text.lower():
            log.warning("mesh: %s", text)
        else:
            log.debug("mesh connection: %s", text)

    async def _on_disconnected(self) -> None:
        if self.nc is not None and not self._closing and self.state == JOINED:
            self._set_state(RECONNECTING, "lost the connection to the mesh; reconnecting")

    async def _on_reconnected(self) -> None:
        self._set_state(JOINED)
        # The hub may have restarted: watch afresh (its consumers are gone) and announce at once.
        for t in self._tasks:
            if t.get_name() == "watcher":
                t.cancel()
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(self._watcher(), name="watcher"))
        self._last_announcement = None
        self.poke()

    # -- announcing -------------------------------------------------------------------------------------

    def poke(self) -> None:
        """Something visible changed (models, capacity): announce soon."""
        self._poke.set()

    def announcement(self) -> dict:
        node = self.node
        lim = self.config.limits
        models = []
        free_total = queued_total = 0
        mesh_room = max(0, lim.max_concurrent - len(self._served))
        for m in node.manager.routable():
            e = m.engine
            entry: dict[str, Any] = {"id": m.id, "state": m.state}
            if e is not None:
                c = e.counts()
                free = max(0, min(c["slots"] - c["slots_busy"] - lim.reserved_local_slots, mesh_room))
                st = e.stats.summary()
                entry.update(context_length=e.n_ctx_seq, slots=c["slots"], free_slots=free, queued=c["queued"],
                             tokens_per_second_p50=st["tokens_per_second_p50"], ttft_ms_p50=st["ttft_ms_p50"])
                free_total += free
                queued_total += c["queued"]
            else:  # on disk, loads on first request
                entry.update(context_length=None, slots=None, free_slots=mesh_room, queued=0)
                free_total += mesh_room
            models.append(entry)
        free_total = min(free_total, mesh_room)  # the node's own limit caps the sum over its models
        cap = node.runtime_cap.cap if node.runtime_cap else None
        return {
            "name": self.config.name,
            "version": __version__,
            "features": list(FEATURES),
            "ts": time.time(),
            "ttl": ANNOUNCE_TTL,
            "capability": {"backend": cap.backend if cap else None,
                           "devices": [d.name for d in cap.devices] if cap else [],
                           "ram_total_bytes": cap.ram_total_bytes if cap else None},
            "models": models,
            "free_slots": free_total,
            "queued": queued_total,
            "limits": asdict(lim),
        }

    async def _announcer(self) -> None:
        last_put = 0.0
        while True:
            try:
                await asyncio.wait_for(self._poke.wait(), REFRESH_INTERVAL)
            except asyncio.TimeoutError:
                pass
            self._poke.clear()
            # At most a few writes per second however busy the node is.
            wait = 0.25 - (time.monotonic() - last_put)
            if wait > 0:
                await asyncio.sleep(wait)
            if self.nc is None or not self.nc.is_connected:
                continue
            body = self.announcement()
            doc = sign_announcement(self.ident, body)
            try:
                await asyncio.wait_for(self._write_entry(self.nc, self.kv, doc), 3)
                last_put = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("announce failed: %s", e)

    async def _write_entry(self, nc, kv, doc: bytes | None) -> None:
        """This node's directory entry: ``doc``, or deleted (None). On a private hub through the hub
        (``kv`` None), which writes it after checking it; on an open mesh into the bucket directly."""
        if kv is None:
            await nc.publish(announce_subject(self.ident.public), doc or b"")
            await nc.flush()
        elif doc is None:
            await kv.delete(self.ident.public)
        else:
            await kv.put(self.ident.public, doc)

    async def _watcher(self) -> None:
        """Start the directory watch (again after a reconnect: the snapshot catches up on what was
        missed while disconnected); retried until it works."""
        while True:
            watch = self._watch
            if watch is None:
                return
            try:
                await watch.start()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("directory watch interrupted (%s); watching again", e)
                await asyncio.sleep(1)

    async def _expirer(self) -> None:
        while True:
            await asyncio.sleep(1)
            if self.directory.expire():
                self._peers_changed()

    # -- routing --------------------------------------------------------------------------------------

    def candidates(self, model_id: str, max_tokens: int | None, exclude: set[str] = frozenset()) -> list[Peer]:
        if not self.connected:
            return []
        return rank_peers(list(self.directory.peers.values()), model_id, self.in_flight, max_tokens, set(exclude))

    def peer_has_room(self, peer: Peer, model_id: str) -> bool:
        m = peer.model(model_id) or {}
        free = m.get("free_slots")
        return (free if isinstance(free, int) else 1) - self.in_flight.get(peer.id, 0) > 0

    async def generate(self, kind: str, body: dict, model_id: str, max_tokens: int | None,
                       first: list[Peer]) -> AsyncIterator[dict]:
        """Run one choice on the mesh: events {"t": "start", "prompt_tokens"}, {"t": "d", "pieces"} (one per token),
        {"t": "done", "finish_reason", "usage"}. Fails over to the next peer when one is lost or refuses,
        carrying the partial answer along so the client sees one unbroken answer."""
        text = ""
        tokens_before = 0
        prompt_tokens: int | None = None
        tried: set[str] = set()
        queue = list(first)
        started = False
        last_error = "no peer serves this model"
        busy: set[str] = set()
        busy_deadline = time.monotonic() + BUSY_WAIT_SECONDS
        pause = 0.02  # a slot freed a moment ago is often the one we wait for
        while True:
            if not queue:
                queue = self.candidates(model_id, None if max_tokens is None else max_tokens - tokens_before, tried)
            if not queue and busy and time.monotonic() < busy_deadline:
                # Every peer that is still there is busy: wait for room instead of failing the request.
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                tried -= busy
                busy.clear()
                continue
            if not queue:
                where = "every peer serving it was lost" if tried else "no live peer serves it"
                raise MeshUnavailable(f"The answer from the mesh could not be {'finished' if started else 'started'}: "
                                      f"{where} ({last_error}).", started)
            peer = queue.pop(0)
            if peer.id in tried:
                continue
            tried.add(peer.id)
            remaining = None if max_tokens is None else max_tokens - tokens_before
            if remaining is not None and remaining <= 0:
                yield {"t": "done", "finish_reason": "length",
                       "usage": {"prompt_tokens": prompt_tokens or 0, "completion_tokens": tokens_before}}
                return
            req_body = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "n")}
            if remaining is not None:
                req_body["max_tokens"] = remaining
                req_body.pop("max_completion_tokens", None)
            peer_tokens = 0
            try:
                async for ev in self._call(peer, kind, req_body, text):
                    if ev["t"] == "start":
                        if prompt_tokens is None:
                            prompt_tokens = ev["p"]
                            yield {"t": "start", "prompt_tokens": prompt_tokens, "model": ev.get("m") or model_id}
                    elif ev["t"] == "d":
                        started = True
                        peer_tokens = ev.get("n", peer_tokens + 1)
                        pieces = list(ev["x"])
                        text += "".join(pieces)
                        yield {"t": "d", "pieces": pieces}
                    elif ev["t"] == "done":
                        u = ev.get("u") or {}
                        done = tokens_before + int(u.get("completion_tokens", peer_tokens))
                        yield {"t": "done", "finish_reason": ev.get("f", "stop"),
                               "usage": {"prompt_tokens": prompt_tokens or u.get("prompt_tokens", 0),
                                         "completion_tokens": done,
                                         "cached_tokens": int(u.get("cached_tokens", 0)) if not tokens_before else 0}}
                        return
            except PeerBusy as e:
                last_error = str(e)
                busy.add(peer.id)
                continue
            except PeerLost as e:
                last_error = str(e)
                log.info("mesh: peer %s lost (%s)%s", peer.name, e,
                         f"; continuing the answer elsewhere after {len(text)} characters" if started else "")
                tokens_before += peer_tokens
                continue

    async def _call(self, peer: Peer, kind: str, body: dict, prefix: str) -> AsyncIterator[dict]:
        nc = self.nc
        if nc is None or not nc.is_connected:
            raise PeerLost("this node is not connected to the mesh")
        rid = uuid.uuid4().hex
        sealed, key = seal_request(peer.id, {"rid": rid, "kind": kind, "body": body, "prefix": prefix,
                                             "from": self.ident.public})
        inbox = nc.new_inbox()  # _I.<this node>.…: the only place the peer will answer
        sub = await nc.subscribe(inbox, pending_msgs_limit=-1)
        self.in_flight[peer.id] = self.in_flight.get(peer.id, 0) + 1
        t0 = time.monotonic()
        finished = False
        try:
            await nc.publish(req_subject(peer.id), sealed, reply=inbox,
                             headers=request_headers(self.ident, inbox, sealed, rid))
            probed = False
            last_ok = time.monotonic()  # the last message that really came from the peer
            forged = 0
            while True:
                # Half the liveness window in silence: probe. A peer whose process is gone has no
                # subscription left, so NATS answers "no responders" at once; a live one ignores the
                # empty probe. Then the rest of the window. Only authentic messages count as signs of
                # life: a flood of forged ones cannot keep a dead request waiting.
                wait = last_ok + (LIVENESS_TIMEOUT if probed else LIVENESS_TIMEOUT / 2) - time.monotonic()
                try:
                    msg = await sub.next_msg(timeout=max(wait, 0.001))
                except (asyncio.TimeoutError, NatsError) as e:
                    if not (isinstance(e, asyncio.TimeoutError) or "timeout" in str(e).lower()):
                        raise PeerLost(str(e)) from None
                    if not probed:
                        probed = True
                        await nc.publish(req_subject(peer.id), b"", reply=inbox)
                        continue
                    raise PeerLost(f"no word from {peer.name} for {LIVENESS_TIMEOUT:.0f} s") from None
                if msg.headers and msg.headers.get("Status") == "503":
                    raise PeerLost(f"{peer.name} is not listening (it left or crashed)")
                try:
                    m = unseal(key, msg.data)
                except ValueError:
                    forged += 1
                    if forged == 1:
                        log.warning("mesh: dropping replies that are not from %s (forged or damaged)", peer.name)
                    continue
                last_ok = time.monotonic()
                probed = False
                t = m.get("t")
                if t == "hb":
                    continue
                if t == "ack":
                    lat = (time.monotonic() - t0) * 1000
                    peer.latency_ms = lat if peer.latency_ms is None else 0.8 * peer.latency_ms + 0.2 * lat
                    continue
                if t == "err":
                    err = m.get("error") or {}
                    status = int(m.get("status", 500))
                    if err.get("code") == "peer_busy":
                        finished = True
                        raise PeerBusy(f"{peer.name} is busy")
                    if err.get("code") in FINAL_CODES:
                        finished = True
                        log.warning("mesh: %s: %s; not trying another peer with this request", peer.name,
                                    err.get("message", err.get("code")))
                        raise RemoteError(status, err)
                    if status >= 500 or err.get("code") in _RETRYABLE_CODES:
                        raise PeerLost(f"{peer.name}: {err.get('message', 'error')}")
                    finished = True
                    raise RemoteError(status, err)
                yield m
                if t == "done":
                    finished = True
                    return
        finally:
            self.in_flight[peer.id] = max(0, self.in_flight.get(peer.id, 1) - 1)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            if not finished and nc.is_connected:
                # The client went away or the peer was given up on: stop the work over there.
                with contextlib.suppress(Exception):
                    await nc.publish(ctl_subject(peer.id), seal(key, {"t": "cancel", "rid": rid}),
                                     headers={"CM-Rid": rid})

    # -- serving --------------------------------------------------------------------------------------

    async def _send(self, s: Served, m: dict) -> None:
        nc = self.nc
        if nc is None:
            return
        s.last_sent = time.monotonic()
        with contextlib.suppress(Exception):
            await nc.publish(s.reply, seal(s.key, m))

    async def _on_ctl(self, msg) -> None:
        rid = (msg.headers or {}).get("CM-Rid")
        s = self._served.get(rid or "")
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

    async def _on_request(self, msg) -> None:
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
        if req["rid"] in self._served:
            self.dropped_requests.drop("replayed", f"a second request {req['rid']} from {signer}")
            return
        s = Served(req["rid"], key, msg.reply)
        asyncio.get_running_loop().create_task(self._serve(s, req))

    async def _serve(self, s: Served, req: dict) -> None:
        def refuse(status: int, message: str, code: str, kind: str = "server_error") -> dict:
            return {"t": "err", "status": status, "error": {"message": message, "type": kind, "code": code}}

        lim = self.config.limits
        if len(self._served) >= lim.max_concurrent:
            await self._send(s, refuse(503, "this peer is serving as many mesh requests as its owner allows",
                                       "peer_busy"))
            return
        self._served[s.rid] = s
        self.poke()
        await self._send(s, {"t": "ack"})
        beat = asyncio.get_running_loop().create_task(self._heartbeat(s))
        try:
            kind, body, prefix = req.get("kind"), dict(req.get("body") or {}), str(req.get("prefix") or "")
            body["n"] = 1
            body.pop("stream", None)
            body.pop("stream_options", None)
            try:
                gp = parse_generation(body, None, 16 if kind == "completion" else None)
                if gp.max_tokens is not None and gp.max_tokens > lim.max_tokens:
                    await self._send(s, refuse(403, f"this peer serves at most {lim.max_tokens} tokens per mesh "
                                                    f"request", "mesh_limit"))
                    return
                if gp.max_tokens is None:
                    body["max_tokens"] = lim.max_tokens
                    gp = parse_generation(body, None, None)
                m = self.node.find(gp.model)
                e = m.engine if m is not None else None
                if e is not None:
                    c = e.counts()
                    if c["slots"] - c["slots_busy"] <= lim.reserved_local_slots and c["slots"] > lim.reserved_local_slots:
                        await self._send(s, refuse(503, "this peer's free slots are kept for its own use", "peer_busy"))
                        return
                prep = await (prepare_chat if kind == "chat" else prepare_completion)(self.node, body, gp, prefix)
            except APIError as err:
                await self._send(s, {"t": "err", "status": err.status, "error": err.body()["error"]})
                return
            if s.cancelled:
                return
            if self._pump is None:
                self._pump = LoopPump(asyncio.get_running_loop())
            gen = Generation(prep.engine, prep.prompts[:1], prep.gp, self._pump)
            try:
                gen.submit()
            except APIError as err:
                await self._send(s, {"t": "err", "status": err.status, "error": err.body()["error"]})
                return
            s.gen = gen
            await self._send(s, {"t": "start", "p": len(prep.prompts[0]), "m": prep.engine.id})
            n = 0
            pieces: list[str] = []
            flush_at = 0.0  # the first token goes out at once; later ones in batches (fewer messages)
            while not gen.finished and not s.cancelled:
                timeout = None if not pieces else max(0.0, flush_at - time.monotonic())
                try:
                    _, ev = await gen.next(timeout)
                except asyncio.TimeoutError:
                    ev = None
                if isinstance(ev, TokenEvent):
                    n += 1
                    pieces.append(ev.text)
                    if n > 1 and len(pieces) == 1:
                        flush_at = time.monotonic() + COALESCE_SECONDS
                    if n > 1 and time.monotonic() < flush_at:
                        continue
                if pieces:
                    await self._send(s, {"t": "d", "x": pieces, "n": n})
                    pieces = []
                if isinstance(ev, DoneEvent):
                    gen.jobs[0].done = ev
                    self.served_total += 1
                    await self._send(s, {"t": "done", "f": ev.finish_reason,
                                         "u": {"prompt_tokens": len(prep.prompts[0]),
                                               "completion_tokens": ev.completion_tokens,
                                               "cached_tokens": ev.cached_tokens}})
                elif isinstance(ev, ErrorEvent):
                    # engine_crashed: this request may be what crashed the engine; 500, and the
                    # requester will not try it on another peer (FINAL_CODES)
                    status = 500 if ev.code == "engine_crashed" else 503
                    await self._send(s, refuse(status, ev.message, ev.code or "engine_error"))
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("mesh request failed")
            await self._send(s, refuse(500, f"the peer failed: {e}", "internal_error"))
        finally:
            beat.cancel()
            if s.gen is not None:
                s.gen.cancel()
            self._served.pop(s.rid, None)
            self.poke()

    async def _heartbeat(self, s: Served) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL / 2)
            if time.monotonic() - s.last_sent >= HEARTBEAT_INTERVAL:
                await self._send(s, {"t": "hb"})


async def _quiet(e: Exception) -> None:
    log.debug("mesh join connection: %s", e)


def _connect_error(e: Exception, urls, invite: bool) -> MeshError:
    text = str(e)
    where = ", ".join(urls)
    if "authorization violation" in text.lower():
        if invite:
            return MeshError("the hub does not accept this invite: it was already used, has expired or was "
                             "withdrawn; ask for a new one", 403, "invite_rejected")
        return MeshError(f"the mesh at {where} refused this node (not a member, or removed from it); join with an "
                         f"invite", 403, "not_authorized")
    return MeshError(f"could not reach the mesh at {where} ({type(e).__name__}: {text or 'no answer'}); check that "
                     f"the hub is running and reachable from this machine", 502, "hub_unreachable")

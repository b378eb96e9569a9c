"""The node's part in a mesh, composed of its roles: membership (membership.py: connection, join,
leave, state), announcing (announcer.py), watching the directory (watch.py), sending requests to
peers with failover (requester.py over link.py) and serving peers' requests (serving.py).

One ``Mesh`` per node. It runs on the node's event loop; the HTTP layer (runtime/api/mesh_routes.py)
and the app use its public methods and the status it reports. It sees of its node only what it is
given (``NodeServices``), never the node itself.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nats

from ..engine.events import GenEvent
from .announcer import Announcer
from .config import MeshConfig
from .directory import Directory, Peer
from .identity import Identity, load_or_create
from .link import NatsLink
from .membership import Membership, MeshError
from .protocol import FEATURES, PROTOCOL_VERSION
from .requester import Requester
from .serving import LocalGeneration, LocalModels, Serving
from .watch import DirectoryWatch, expire_peers, keep_watching


@dataclass(frozen=True)
class NodeServices:
    """What the mesh uses of its node, and nothing more."""

    models: LocalModels  # what this node serves: announced, and guarded (reserved slots) when serving
    generation: LocalGeneration  # the generation pipeline: a peer's request checked, tokenized and run here
    publish: Callable[[dict], None]  # an event for the node's listeners (/api/events, the app)
    capability: Callable[[], Any]  # the detected hardware (hardware.Capability), None while starting
    hub: Callable[[], Any]  # the private hub this node hosts (runtime.mesh.hub.Hub), or None


class Presence:
    """What runs while connected: the announcer, the directory watch and the expiry of silent peers
    (membership.Session)."""

    def __init__(
        self, directory: Directory, announcer: Announcer, serving: Serving, peers_changed: Callable[[], None]
    ) -> None:
        self.directory = directory
        self.announcer = announcer
        self.serving = serving
        self._peers_changed = peers_changed
        self.watch: DirectoryWatch | None = None
        self._tasks: dict[str, asyncio.Task] = {}

    async def subscribe(self, nc: nats.NATS) -> None:
        await self.serving.subscribe(nc)

    def begin(self, nc: nats.NATS, kv) -> None:
        self.watch = DirectoryWatch(nc, self.directory, lambda keys: self._peers_changed(), hub=kv is None)
        loop = asyncio.get_running_loop()
        self._tasks = {
            "announcer": loop.create_task(self.announcer.run(nc, kv), name="announcer"),
            "watcher": loop.create_task(keep_watching(self.watch), name="watcher"),
            "expirer": loop.create_task(
                expire_peers(self.directory, lambda gone: self._peers_changed()), name="expirer"
            ),
        }
        self.announcer.poke()  # announce now, not at the next refresh

    def stop(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        self._tasks = {}
        self.watch = None  # its subscription goes with the connection

    async def withdraw(self, nc: nats.NATS, kv) -> None:
        await self.announcer.write_entry(nc, kv, None)

    def forget(self) -> None:
        if self.directory.peers:
            self.directory.peers.clear()
            self._peers_changed()

    def resume(self) -> None:
        old = self._tasks.pop("watcher", None)
        if old is not None:
            old.cancel()
        if self.watch is not None:
            self._tasks["watcher"] = asyncio.get_running_loop().create_task(keep_watching(self.watch), name="watcher")
        self.announcer.poke()


class Mesh:
    def __init__(self, config_dir: Path, node_id: str, services: NodeServices) -> None:
        self.services = services
        self.config_path = config_dir / "mesh.json"
        self.config = MeshConfig.load(self.config_path)
        self.ident: Identity = load_or_create(f"mesh-node-{node_id}", config_dir / "mesh-node.seed")
        if not self.config.name:
            self.config.name = socket.gethostname()[:48] or self.ident.public[:8]
        self.directory = Directory(self.ident.public)
        self.serving = Serving(
            self.ident,
            lambda: self.config.limits,
            services.models,
            services.generation,
            lambda: self.membership.nc,
            self.poke,
        )
        self.announcer = Announcer(
            self.ident, lambda: self.config, services.models, services.capability, lambda: len(self.serving.served)
        )
        self.presence = Presence(self.directory, self.announcer, self.serving, self._peers_changed)
        self.membership = Membership(
            self.config,
            self.config_path,
            self.ident,
            self.presence,
            lambda: services.publish(dict(self.status(with_peers=False), type="mesh")),
        )
        self.requester = Requester(
            self.directory, NatsLink(lambda: self.membership.nc, self.ident), lambda: self.connected
        )

    # -- status ---------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.membership.connected

    def status(self, with_peers: bool = True) -> dict:
        nc = self.membership.nc
        d: dict[str, Any] = {
            "state": self.membership.state,
            "url": nc.connected_url.geturl()
            if nc is not None and nc.connected_url and nc.is_connected
            else (self.config.urls[0] if self.config.urls else None),
            "urls": list(self.config.urls),
            "mode": self.config.mode if self.config.joined else None,
            "error": self.membership.error,
            "node": {"id": self.ident.public, "name": self.config.name},
            "hub": self._hub_status(),
            "limits": asdict(self.config.limits),
            "serving_mesh_requests": len(self.serving.served),
            "served_total": self.serving.served_total,
            "peer_count": len(self.directory.peers),
            "protocol": PROTOCOL_VERSION,
            "features": list(FEATURES),
            # announcements that failed their signature or field checks (never routed to, never listed)
            "rejected_announcements": self.directory.rejected,
            "rejected_announcement_reason": self.directory.drops.last_reason,
            # junk on this node's request subject (unsigned, bad signature, undecryptable, oversized, …)
            "dropped_requests": self.serving.dropped_requests.total,
            "dropped_requests_by_reason": dict(self.serving.dropped_requests.by_reason),
            "dropped_request_reason": self.serving.dropped_requests.last_reason,
        }
        if with_peers:
            d["peers"] = self.directory.public()
        return d

    def _hub_status(self) -> dict | None:
        hub = self.services.hub()
        if hub is None:
            return None
        d: dict[str, Any] = {"urls": list(hub.urls)}
        if hub.relay is not None:  # members' announcements the hub refused to write (invalid, too often)
            d["rejected_announcements"] = hub.relay.drops.total
            d["rejected_announcement_reason"] = hub.relay.drops.last_reason
        return d

    def set_error(self, message: str) -> None:
        """Show the mesh as failed, with why (e.g. this node's own hub did not start)."""
        self.membership.set_state("error", message)

    def _peers_changed(self) -> None:
        self.services.publish({"type": "peers", "peers": self.directory.public()})

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """At node start: rejoin the mesh this node was part of (in the background)."""
        await self.membership.start()

    async def connect_saved(self) -> None:
        """Connect now to the saved mesh (this node's own hub, at start)."""
        await self.membership.connect_saved()

    async def join(self, target: str, name: str | None = None) -> dict:
        """Join a mesh: an invite token (private hub) or a NATS URL (an open or public mesh)."""
        await self.membership.join(target, name)
        return self.status()

    async def leave(self) -> dict:
        await self.membership.leave()
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
        await self.serving.close()
        await self.membership.close()

    def poke(self) -> None:
        """Something visible changed (models, capacity): announce soon."""
        self.announcer.poke()

    # -- requesting -----------------------------------------------------------------------------------

    def candidates(self, model_id: str, max_tokens: int | None, exclude: AbstractSet[str] = frozenset()) -> list[Peer]:
        return self.requester.candidates(model_id, max_tokens, exclude)

    def peer_has_room(self, peer: Peer, model_id: str) -> bool:
        return self.requester.peer_has_room(peer, model_id)

    def generate(
        self, kind: str, body: dict, model_id: str, max_tokens: int | None, first: list[Peer]
    ) -> AsyncIterator[GenEvent]:
        """One choice on the mesh, failing over between peers (Requester.generate)."""
        return self.requester.generate(kind, body, model_id, max_tokens, first)

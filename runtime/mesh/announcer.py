"""This node's entry in the directory: what it serves and how much room it has, signed, written at
once when something visible changes (at most 4 times a second) and refreshed every
``REFRESH_INTERVAL`` so it never ages out while the node is there."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

import nats

from .. import __version__
from .config import MeshConfig
from .identity import Identity
from .protocol import ANNOUNCE_TTL, FEATURES, REFRESH_INTERVAL, announce_subject, sign_announcement

log = logging.getLogger(__name__)


class RoutableModels(Protocol):
    def routable(self) -> list: ...


class Announcer:
    """``serving`` says how many peers' requests run here now; ``capability`` is the node's detected
    hardware (None while it starts)."""

    def __init__(
        self,
        ident: Identity,
        config: Callable[[], MeshConfig],
        models: RoutableModels,
        capability: Callable[[], Any],
        serving: Callable[[], int],
    ) -> None:
        self.ident = ident
        self._config = config
        self.models = models
        self._capability = capability
        self._serving = serving
        self._poke = asyncio.Event()

    def poke(self) -> None:
        """Something visible changed (models, capacity): announce soon."""
        self._poke.set()

    def announcement(self) -> dict:
        config = self._config()
        lim = config.limits
        models = []
        free_total = queued_total = 0
        mesh_room = max(0, lim.max_concurrent - self._serving())
        for m in self.models.routable():
            e = m.engine
            entry: dict[str, Any] = {"id": m.id, "state": m.state}
            if e is not None:
                c = e.counts()
                free = max(0, min(c["slots"] - c["slots_busy"] - lim.reserved_local_slots, mesh_room))
                st = e.stats.summary()
                entry.update(
                    context_length=e.n_ctx_seq,
                    slots=c["slots"],
                    free_slots=free,
                    queued=c["queued"],
                    tokens_per_second_p50=st["tokens_per_second_p50"],
                    ttft_ms_p50=st["ttft_ms_p50"],
                    samples=st["samples"],
                    window_seconds=st["window_seconds"],
                )
                free_total += free
                queued_total += c["queued"]
            else:  # on disk, loads on first request
                entry.update(context_length=None, slots=None, free_slots=mesh_room, queued=0)
                free_total += mesh_room
            models.append(entry)
        free_total = min(free_total, mesh_room)  # the node's own limit caps the sum over its models
        cap = self._capability()
        return {
            "name": config.name,
            "version": __version__,
            "features": list(FEATURES),
            "ts": time.time(),
            "ttl": ANNOUNCE_TTL,
            "capability": {
                "backend": cap.backend if cap else None,
                "devices": [d.name for d in cap.devices] if cap else [],
                "ram_total_bytes": cap.ram_total_bytes if cap else None,
            },
            "models": models,
            "free_slots": free_total,
            "queued": queued_total,
            "limits": asdict(lim),
        }

    async def run(self, nc: nats.NATS, kv) -> None:
        """Announce on every poke and every ``REFRESH_INTERVAL`` while connected (a task per connection)."""
        last_put = 0.0
        while True:
            try:
                await asyncio.wait_for(self._poke.wait(), REFRESH_INTERVAL)
            except TimeoutError:
                pass
            self._poke.clear()
            # At most a few writes per second however busy the node is.
            wait = 0.25 - (time.monotonic() - last_put)
            if wait > 0:
                await asyncio.sleep(wait)
            if not nc.is_connected:
                continue
            doc = sign_announcement(self.ident, self.announcement())
            try:
                await asyncio.wait_for(self.write_entry(nc, kv, doc), 3)
                last_put = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("announce failed: %s", e)

    async def write_entry(self, nc: nats.NATS, kv, doc: bytes | None) -> None:
        """This node's directory entry: ``doc``, or deleted (None). On a private hub through the hub
        (``kv`` None), which writes it after checking it; on an open mesh into the bucket directly."""
        if kv is None:
            await nc.publish(announce_subject(self.ident.public), doc or b"")
            await nc.flush()
        elif doc is None:
            await kv.delete(self.ident.public)
        else:
            await kv.put(self.ident.public, doc)

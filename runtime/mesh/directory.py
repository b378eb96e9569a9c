"""The directory as this node sees it: peers from verified announcements, expired locally when their
owner stops refreshing them (a crashed node), removed at once when their owner deletes them (a node
that leaves). Plain data advanced by plain methods; the NATS watcher feeds it (watch.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..catalog import mesh_figures
from .drops import Drops
from .protocol import ANNOUNCE_TTL, BadAnnouncement, open_announcement


@dataclass
class Peer:
    id: str
    announcement: dict
    last_seen: float  # local monotonic time of the last refresh
    latency_ms: float | None = None  # measured by this node's own requests (EWMA)

    @property
    def name(self) -> str:
        return str(self.announcement.get("name") or self.id[:8])

    @property
    def models(self) -> list[dict]:
        return self.announcement["models"]  # validated: a list of checked model entries

    @property
    def ttl(self) -> float:
        return self.announcement.get("ttl") or ANNOUNCE_TTL

    def model(self, model_id: str) -> dict | None:
        lo = model_id.lower()
        return next((m for m in self.models if m["id"].lower() == lo), None)

    def public(self, now: float) -> dict:
        a = self.announcement
        tps = [v for m in self.models if (v := m.get("tokens_per_second_p50"))]
        age = now - self.last_seen
        return {
            "id": self.id,
            "name": self.name,
            "version": a.get("version"),
            "protocol": a.get("v"),
            "features": list(a.get("features") or []),
            "backend": (a.get("capability") or {}).get("backend"),
            "models": [
                {
                    k: m.get(k)
                    for k in (
                        "id",
                        "context_length",
                        "slots",
                        "free_slots",
                        "queued",
                        "tokens_per_second_p50",
                        "ttft_ms_p50",
                    )
                }
                for m in self.models
            ],
            "free_slots": a.get("free_slots"),
            "queued": a.get("queued"),
            "tokens_per_second": max(tps) if tps else None,
            "latency_ms": round(self.latency_ms, 2) if self.latency_ms is not None else None,
            "limits": a.get("limits"),
            "state": "live" if age <= self.ttl / 2 else "stale",
            "last_seen_seconds": round(age, 1),
        }


@dataclass
class Directory:
    self_id: str
    peers: dict[str, Peer] = field(default_factory=dict)
    # announcements that failed verification or validation (forgeries, damage, hostile members)
    drops: Drops = field(default_factory=lambda: Drops("directory entries"))

    @property
    def rejected(self) -> int:
        return self.drops.total

    def apply(self, key: str, raw: bytes | None, now: float | None = None, stored: bool = False) -> bool:
        """One KV update (raw None: deleted or purged). True when the set of peers or what they serve
        changed in a way the UI should show. ``stored``: an entry read back from the bucket when a watch
        starts, perhaps long after it was written (a crashed node's leftover): it counts as seen when it
        was written, by the announcement's own clock, not now, and never replaces a newer one
        that arrived live meanwhile. An invalid entry is dropped and counted; it does not remove the
        peer's last valid announcement (which expires after its TTL unless a valid refresh comes), so
        junk written under a node's key cannot make that node vanish."""
        now = time.monotonic() if now is None else now
        if key == self.self_id:
            return False
        if raw is None:
            return self.peers.pop(key, None) is not None
        try:
            ann = open_announcement(key, raw)
        except BadAnnouncement as e:
            self.drops.drop("invalid", str(e))
            return False
        seen = now
        ttl = ann.get("ttl") or ANNOUNCE_TTL
        if stored and ann.get("ts") is not None:
            seen = now - min(max(0.0, time.time() - ann["ts"]), ttl + 1)
        old = self.peers.get(key)
        if stored and old is not None and (old.announcement.get("ts") or 0) > (ann.get("ts") or 0):
            return False  # a live refresh already brought something newer
        if old is None:
            if now - seen > ttl:
                return False  # already expired
            self.peers[key] = Peer(key, ann, seen)
            return True
        changed = _visible(old.announcement) != _visible(ann)
        old.announcement, old.last_seen = ann, max(old.last_seen, seen)
        return changed

    def expire(self, now: float | None = None) -> list[str]:
        """Drop peers whose announcement was not refreshed within its TTL; their ids."""
        now = time.monotonic() if now is None else now
        gone = [p.id for p in self.peers.values() if now - p.last_seen > p.ttl]
        for pid in gone:
            del self.peers[pid]
        return gone

    def retain(self, keys: set[str]) -> list[str]:
        """After a fresh watch delivered its initial values: drop peers that are no longer there."""
        gone = [pid for pid in self.peers if pid not in keys]
        for pid in gone:
            del self.peers[pid]
        return gone

    def serving(self, model_id: str) -> list[Peer]:
        return [p for p in self.peers.values() if p.model(model_id) is not None]

    def mesh_models(self) -> dict[str, list[Peer]]:
        """Model id (as its first announcer spells it) → the peers serving it."""
        out: dict[str, list[Peer]] = {}
        spelling: dict[str, str] = {}
        for p in self.peers.values():
            for m in p.models:
                mid = m["id"]
                canon = spelling.setdefault(mid.lower(), mid)
                out.setdefault(canon, []).append(p)
        return out

    def model_summaries(self) -> dict[str, dict]:
        """Models served by live peers → what /v1/models shows of them: how many peers, the smallest
        context, the median across peers of their speed, the best first-token time, the free slots of all
        (runtime/catalog.py checks the peers' figures; docs/entry.md defines them)."""
        out = {}
        for mid, peers in self.mesh_models().items():
            f = mesh_figures(p.model(mid) or {} for p in peers)
            out[mid] = {
                "peers": f["peers"],
                "context_length": f["context_length"],
                "tokens_per_second_p50": f["tps_p50_median"],  # the median across peers
                "ttft_ms_p50": f["ttft_ms_p50_best"],  # the best (lowest) across peers
                "free_slots": f["free_slots"],
            }
        return out

    def public(self, now: float | None = None) -> list[dict]:
        now = time.monotonic() if now is None else now
        return sorted((p.public(now) for p in self.peers.values()), key=lambda d: (d["name"], d["id"]))


def _visible(a: dict) -> tuple:
    """What a change event is worth sending for: identity, models and their capacity."""
    return (
        a.get("name"),
        a.get("version"),
        a.get("free_slots"),
        a.get("queued"),
        tuple((m["id"], m["context_length"], m["free_slots"], m["queued"]) for m in a["models"]),
    )

"""Choosing where a request runs. Pure functions: tests call them directly."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .directory import Peer


@dataclass(frozen=True)
class Candidate:
    peer: Peer
    score: tuple


def rank_peers(
    peers: list[Peer],
    model_id: str,
    in_flight: dict[str, int],
    max_tokens: int | None = None,
    exclude: set[str] = frozenset(),
    rng: random.Random | None = None,
) -> list[Peer]:
    """Peers that serve ``model_id``, best first.

    Best = has a free slot after counting the requests this node already sent it (announcements are a
    few seconds old, our own in-flight count is not), then the shortest queue, then the fastest measured
    tok/s, then the lowest latency we measured; ties are broken at random so that equal peers share the
    load. Peers whose share limits refuse this request (max tokens per mesh request) are left out.
    """
    rng = rng or random
    ranked = []
    for p in peers:
        if p.id in exclude:
            continue
        m = p.model(model_id)
        if m is None:
            continue
        limits = p.announcement.get("limits") or {}
        cap = limits.get("max_tokens")
        if max_tokens is not None and isinstance(cap, int) and max_tokens > cap:
            continue
        mine = in_flight.get(p.id, 0)
        free = _int(m.get("free_slots"), _int(p.announcement.get("free_slots"), 1)) - mine
        queued = _int(m.get("queued"), 0) + max(0, -free)
        tps = m.get("tokens_per_second_p50") or 0.0
        lat = p.latency_ms if p.latency_ms is not None else 50.0
        # tok/s in coarse buckets: a 3% difference in a noisy measurement should not beat a free slot
        ranked.append(((0 if free > 0 else 1, queued, -round(float(tps) / 10), round(lat / 25), rng.random()), p))
    ranked.sort(key=lambda t: t[0])
    return [p for _, p in ranked]


def local_has_room(free_slots: int | None, queued: int | None) -> bool:
    """Local first when this node serves the model and a slot is free (or the model is not loaded yet:
    it loads on demand)."""
    if free_slots is None:
        return True
    return free_slots > 0 and not queued


def _int(v, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default

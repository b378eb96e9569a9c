"""Choosing where a request runs. Pure functions: tests call them directly."""

from __future__ import annotations

import random
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from ..errors import invalid
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
    exclude: AbstractSet[str] = frozenset(),
    rng: random.Random | None = None,
) -> list[Peer]:
    """Peers that serve ``model_id``, best first.

    Best = has a free slot after counting the requests this node already sent it (announcements are a
    few seconds old, our own in-flight count is not), then the shortest queue, then the fastest measured
    tok/s, then the lowest latency we measured; ties are broken at random so that equal peers share the
    load. Peers whose share limits refuse this request (max tokens per mesh request) are left out.
    """
    draw = rng.random if rng is not None else random.random
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
        ranked.append(((0 if free > 0 else 1, queued, -round(float(tps) / 10), round(lat / 25), draw()), p))
    ranked.sort(key=lambda t: t[0])
    return [p for _, p in ranked]


def with_feature(peers: list[Peer], feature: str) -> list[Peer]:
    """The peers whose announcement lists ``feature`` (protocol.FEATURES), in the same order."""
    return [p for p in peers if feature in (p.announcement.get("features") or ())]


def local_has_room(free_slots: int | None, queued: int | None) -> bool:
    """Local first when this node serves the model and a slot is free (or the model is not loaded yet:
    it loads on demand)."""
    if free_slots is None:
        return True
    return free_slots > 0 and not queued


def route(
    model_id: str,
    peers: list[Peer],
    capped: list[Peer],
    known_here: bool,
    served_here: bool,
    here: dict | None,
    peer_has_room: Callable[[Peer], bool],
) -> list[Peer] | None:
    """Where a request runs: None for this node, otherwise the peers to try, best first.

    ``peers``: the peers that take this request, ranked (``rank_peers``); ``capped``: when there are none,
    those that serve the model but refuse this many tokens; ``known_here``/``served_here``: this node
    knows / serves the model; ``here``: its engine's counts (``slots``, ``slots_busy``, ``queued``), None
    while it is not loaded (it loads on first use). Local first while it has room; when it is full, a
    peer with room takes the request, otherwise it waits in the local queue."""
    if not peers:
        if capped and not known_here:
            cap = max((p.announcement.get("limits") or {}).get("max_tokens") or 0 for p in capped)
            raise invalid(
                f"The peers serving '{model_id}' accept at most {cap} tokens per mesh request; "
                f"ask for max_tokens <= {cap}.",
                "max_tokens",
                "mesh_limit",
            )
        return None
    if not served_here:
        return peers
    if here is None:
        return None
    if local_has_room(here["slots"] - here["slots_busy"], here["queued"]):
        return None
    return [p for p in peers if peer_has_room(p)] or None


def _int(v, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default

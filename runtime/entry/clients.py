"""Who is calling: the client's address (X-Forwarded-For honoured only from configured proxies) and a
local throttle on failed authentications per address, which answers a flood of bad keys without any
mesh traffic."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: tuple[str, ...] | list[str]) -> tuple[Network, ...]:
    """'10.0.0.1', '10.0.0.0/8', '::1' → networks (raises ValueError with the bad item)."""
    out = []
    for it in items:
        try:
            out.append(ipaddress.ip_network(it.strip(), strict=False))
        except ValueError:
            raise ValueError(f"'{it}' is not an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/8)") from None
    return tuple(out)


def _in(addr: str, nets: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in n for n in nets)


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address. X-Forwarded-For is believed only when the connection comes from a trusted
    proxy, and then only as far as the chain is trusted: walking from the right (the hop nearest to us),
    the first address that is not a trusted proxy is the client (anything left of it is the client's
    own claim, which it could forge)."""
    addr = peer or "unknown"
    if not forwarded_for or not _in(addr, trusted):
        return addr
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted):
            return hop
        addr = hop
    return addr


@dataclass
class FailureThrottle:
    """Failed authentications per client address: a token bucket each (``burst``, refilled at
    ``per_minute``). Kept in this process only (a flood must cost no mesh traffic), bounded in size."""

    per_minute: float = 120.0
    burst: float = 60.0
    max_clients: int = 10_000
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    def allow(self, client: str, now: float) -> bool:
        """Whether one more failure from ``client`` is answered 401 (True) or 429 (False); counts it."""
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.per_minute / 60)
        ok = tokens >= 1
        self._buckets[client] = (tokens - 1 if ok else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return ok

    def retry_after(self, client: str) -> int:
        tokens = self._buckets.get(client, (0.0, 0.0))[0]
        return max(1, int((1 - tokens) * 60 / self.per_minute + 0.999))

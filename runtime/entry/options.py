"""The entry gate's settings and counters: plain data shared by the gate (gate.py) and its loopback
admin API (admin.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .clients import Network


@dataclass(frozen=True)
class EntryOptions:
    trusted_proxies: tuple[Network, ...] = ()
    admin_host: str = "127.0.0.1"
    admin_port: int = 8444
    bad_auth_per_minute: float = 120.0  # failed authentications per client address before 429


@dataclass
class Counters:
    """What the gate did, for /admin/stats and the tests."""

    refused: int = 0  # 401
    throttled: int = 0  # 429 for too many bad keys from one address
    limited: int = 0  # 429 over a key's limit
    accepted: int = 0
    by_code: dict[str, int] = field(default_factory=dict)

"""API keys as plain data: making one, hashing it, parsing the Authorization header, deciding whether a
key may be used now, and the rate-limit arithmetic. No I/O: runtime/entry/store.py keeps the records in
the mesh and runtime/entry/gate.py applies these functions to requests.

A key is ``cm_`` + 32 random bytes (URL-safe base64, no padding). Only its SHA-256 is stored: a key
has 256 bits of entropy, so a fast hash is safe (no slow KDF is needed) and the hash reveals nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, replace

KEY_PREFIX = "cm_"
KEY_RE = re.compile(r"cm_[A-Za-z0-9_-]{43}")
SHOWN_PREFIX = 8  # characters of a key shown in listings ("cm_AbCdE…"): enough to tell keys apart


def new_key() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def key_id(key: str) -> str:
    """The key's id in the buckets: the hex SHA-256 of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """What the mesh stores about a key (never the key)."""

    id: str  # hex SHA-256 of the key
    name: str
    prefix: str  # the first characters of the key, for people to recognise it
    created_at: float
    rpm: int | None = None  # requests per minute, across all entry nodes
    concurrent: int | None = None  # requests running at once
    tokens_per_day: int | None = None  # prompt + completion tokens per UTC day
    expires_at: float | None = None
    revoked_at: float | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> KeyRecord:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})

    def revoked(self, at: float) -> KeyRecord:
        return self if self.revoked_at is not None else replace(self, revoked_at=at)


def make_key(
    name: str,
    now: float,
    rpm: int | None = None,
    concurrent: int | None = None,
    tokens_per_day: int | None = None,
    expires_in: float | None = None,
) -> tuple[str, KeyRecord]:
    """A new key and its record. The key is shown once; the record is what is stored."""
    name = name.strip()
    if not name or len(name) > 64:
        raise ValueError("a key needs a name of 1 to 64 characters")
    for label, v in (("rpm", rpm), ("concurrent", concurrent), ("tokens_per_day", tokens_per_day)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"'{label}' must be a whole number of at least 1")
    if expires_in is not None and not (expires_in > 0):
        raise ValueError("'expires_in' must be a positive number of seconds")
    key = new_key()
    rec = KeyRecord(
        id=key_id(key),
        name=name,
        prefix=key[:SHOWN_PREFIX],
        created_at=now,
        rpm=rpm,
        concurrent=concurrent,
        tokens_per_day=tokens_per_day,
        expires_at=now + expires_in if expires_in else None,
    )
    return key, rec


# -- authentication --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthFailure:
    code: str
    message: str


MISSING = AuthFailure(
    "missing_api_key",
    "No API key was given. Send your ClosedMesh key as 'Authorization: Bearer cm_…'; the operator of "
    "this entry node issues keys.",
)
MALFORMED = AuthFailure(
    "invalid_api_key",
    "The API key is not in the right form: a ClosedMesh key is 'cm_' followed by 43 letters, digits, "
    "'-' or '_', sent as 'Authorization: Bearer cm_…'.",
)
UNKNOWN = AuthFailure(
    "invalid_api_key", "The API key is not valid. Check that it was copied whole, or ask for a new one."
)
REVOKED = AuthFailure("revoked_api_key", "This API key was revoked; ask the operator of this entry node for a new one.")


def bearer(header: str | None) -> str | None:
    """The token of an 'Authorization: Bearer <token>' header, None when there is none."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def authenticate(header: str | None, records: dict[str, KeyRecord], now: float) -> KeyRecord | AuthFailure:
    """The record of the key in ``header`` when it may be used now, otherwise why not. The lookup is by
    the key's hash, and the hash is compared in constant time: timing reveals nothing about the key."""
    token = bearer(header)
    if token is None:
        return MISSING
    if not KEY_RE.fullmatch(token):
        return MALFORMED
    kid = key_id(token)
    rec = records.get(kid)
    if rec is None or not hmac.compare_digest(rec.id.encode(), kid.encode()):
        return UNKNOWN
    if rec.revoked_at is not None:
        return REVOKED
    if rec.expires_at is not None and rec.expires_at <= now:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(rec.expires_at))
        return AuthFailure("expired_api_key", f"This API key expired on {when}; ask for a new one.")
    return rec


# -- rate limits -----------------------------------------------------------------------------------


RATE_SECONDS = 60  # the limit's period: --rpm R means at most R requests in any 60 seconds


@dataclass(frozen=True)
class RateWindow:
    """The requests accepted in each second of the last minute: ((second, count), ...), oldest first.

    At a time t in second S, the last 60 seconds (t - 60, t] lie within seconds S - 60 … S; all 61 of them
    are counted (the oldest one whole), so a request is accepted only when fewer than the limit were
    accepted in any part of the last 60 s: at most R in any 60 seconds, a burst across a minute boundary
    included. The price of the bound: a client may be refused up to a second before its oldest request
    is a full minute old. At most 61 pairs, whatever the limit."""

    seconds: tuple[tuple[int, int], ...] = ()

    def live(self, second: int) -> RateWindow:
        """The counts that can still overlap the last 60 s at ``second``."""
        first = second - RATE_SECONDS
        if all(s >= first for s, _ in self.seconds):
            return self
        return RateWindow(tuple((s, c) for s, c in self.seconds if s >= first))

    @property
    def total(self) -> int:
        return sum(c for _, c in self.seconds)

    def add(self, second: int) -> RateWindow:
        if self.seconds and self.seconds[-1][0] == second:
            return RateWindow((*self.seconds[:-1], (second, self.seconds[-1][1] + 1)))
        return RateWindow((*self.seconds, (second, 1)))

    def to_json(self) -> dict:
        return {"s": [list(p) for p in self.seconds]}

    @classmethod
    def from_json(cls, d: dict) -> RateWindow:
        if "s" not in d and "m" in d:
            # A record of the earlier per-minute form: its counts as if taken at its minute's last second,
            # which counts them for as long as they can still matter (records expire after RATE_TTL).
            minute = int(d["m"])
            total = int(d.get("c", 0)) + int(d.get("p", 0))
            return cls(((minute * 60 + 59, total),) if total else ())
        pairs = sorted((int(s), int(c)) for s, c in d.get("s", []))
        return cls(tuple((s, c) for s, c in pairs if c > 0))


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    window: RateWindow
    remaining: int
    reset_seconds: float  # until one more request would be allowed (0: now)


def take_request(window: RateWindow | None, limit: int, now: float) -> RateDecision:
    """Whether one more request fits a limit of ``limit`` in any 60 seconds, and the window after it."""
    second = math.floor(now)
    w = (window or RateWindow()).live(second)
    used = w.total
    if used + 1 > limit:
        return RateDecision(False, w, 0, _seconds_until_room(w, limit, now))
    taken = w.add(second)
    remaining = max(0, limit - used - 1)
    return RateDecision(True, taken, remaining, 0.0 if remaining else _seconds_until_room(taken, limit, now))


def _seconds_until_room(w: RateWindow, limit: int, now: float) -> float:
    """When the window holds ``limit - 1`` or fewer: a second's requests stop counting once that second
    can no longer overlap the last 60 s, at its start + 61."""
    total = w.total
    for second, count in w.seconds:
        if total <= limit - 1:
            break
        total -= count
        if total <= limit - 1:
            return max(0.001, second + RATE_SECONDS + 1 - now)
    return 0.001


# -- concurrency leases ----------------------------------------------------------------------------


LEASE_SECONDS = 15.0  # a lease its entry node stops refreshing (it died) is gone after this
LEASE_REFRESH = 5.0


@dataclass
class Leases:
    """A key's running requests: lease id -> expiry time (epoch seconds)."""

    held: dict[str, float] = field(default_factory=dict)

    def live(self, now: float) -> Leases:
        return Leases({k: v for k, v in self.held.items() if v > now})

    def to_json(self) -> dict:
        return {"l": self.held}

    @classmethod
    def from_json(cls, d: dict) -> Leases:
        return cls({str(k): float(v) for k, v in (d.get("l") or {}).items()})


# -- usage ------------------------------------------------------------------------------------------


def utc_day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def seconds_to_midnight(now: float) -> float:
    return 86400 - (now % 86400)


@dataclass(frozen=True)
class DayUsage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_used: float | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, prompt: int, completion: int, at: float) -> DayUsage:
        """One more answer."""
        return DayUsage(self.requests + 1, self.prompt_tokens + prompt, self.completion_tokens + completion, at)

    def merge(self, other: DayUsage) -> DayUsage:
        """These figures plus ``other``'s (answers counted elsewhere, or since the last write)."""
        last = max((t for t in (self.last_used, other.last_used) if t is not None), default=None)
        return DayUsage(
            self.requests + other.requests,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            last,
        )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> DayUsage:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


def duration_header(seconds: float) -> str:
    """A reset time as OpenAI writes it in x-ratelimit-reset-*: '1s', '6m0s', '1h2m3s', '20ms'."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    s = math.ceil(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"

"""Counting what the mesh drops (invalid announcements, junk requests) without letting a flood of it
flood the log: each kind is logged when it first happens, then at most once per interval with the
number dropped since. Plain data; the caller passes the clock in tests."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

LOG_INTERVAL = 60.0  # seconds between two log lines about one kind of dropped message


@dataclass
class Drops:
    what: str  # "announcements", "requests": for the log line
    interval: float = LOG_INTERVAL
    total: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    last_reason: str | None = None  # the last one's detail, in words
    last_at: float | None = None  # wall clock
    _logged_at: float | None = None  # monotonic
    _unlogged: int = 0

    def drop(self, reason: str, detail: str, now: float | None = None) -> bool:
        """Count one dropped message. True when this call wrote a log line."""
        now = time.monotonic() if now is None else now
        self.total += 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        self.last_reason, self.last_at = detail, time.time()
        self._unlogged += 1
        if self._logged_at is not None and now - self._logged_at < self.interval:
            return False
        more = f" ({self._unlogged} dropped since the last report)" if self._logged_at is not None else ""
        log.warning(
            "mesh: dropping %s: %s%s; further ones are counted in the mesh status and reported at most every %.0f s",
            self.what,
            detail,
            more,
            self.interval,
        )
        self._logged_at, self._unlogged = now, 0
        return True

    def status(self) -> dict:
        return {
            "total": self.total,
            "by_reason": dict(self.by_reason),
            "last_reason": self.last_reason,
            "last_at": self.last_at,
        }

"""Running short of file descriptors: warn once per interval, never once per failure.

When a node runs out of descriptors every accept, every file open and every socket fails at once,
hundreds of times a second; a traceback for each buries the log (tens of MB in seconds) and costs the
CPU the node needs to recover. The failures are counted, and one line per interval says how many there
were and what to do.
"""

from __future__ import annotations

import errno
import logging
import time

log = logging.getLogger("runtime.server")

FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})


def is_fd_exhaustion(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in FD_ERRNOS


class FdPressureLog:
    """Counts descriptor-exhaustion events and logs one warning per ``interval`` seconds."""

    def __init__(self, interval: float = 60.0, clock=time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.suppressed = 0
        self.total = 0
        self._last: float | None = None

    def record(self, what: str) -> bool:
        """Count one event; True when it was logged (the first of its interval)."""
        self.total += 1
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return False
        earlier = f" ({self.suppressed} more since the last warning)" if self.suppressed else ""
        log.warning(
            "out of file descriptors: %s%s. New connections are answered 503 or refused until some "
            "close; raise the limit (ulimit -n) if this node should hold more connections. Next "
            "warning in %.0f s at the earliest.",
            what,
            earlier,
            self.interval,
        )
        self._last = now
        self.suppressed = 0
        return True


FD_PRESSURE = FdPressureLog()

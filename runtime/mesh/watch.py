"""The directory watch: every node's view of the bucket, without a JetStream consumer.

A member reads the directory with a plain subscription to ``$KV.closedmesh.*`` (every put, delete and
purge is a message on those subjects, so it arrives live) and, when the watch starts or the
connection comes back, a snapshot: the stream's subjects (``STREAM.INFO`` with a subject filter) and
the last message of each (``STREAM.MSG.GET``). Members therefore need no right to create consumers at
all, and the hub grants none: a consumer's deliver subject is inside the request body, where
nats-server's permissions cannot see it, so a member allowed to create consumers could make the server
deliver the stream into any other node's subjects (issue 10). Every JetStream API call a member may
still make answers once, to the reply subject it names; none amplifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable, Iterable

from nats.js.errors import NotFoundError

from .directory import Directory
from .protocol import BUCKET, KV_SUBJECTS

log = logging.getLogger(__name__)

STREAM = f"KV_{BUCKET}"
_PREFIX = f"$KV.{BUCKET}."
_REMOVED = ("DEL", "PURGE")
SNAPSHOT_CONCURRENCY = 16  # message reads in flight during a snapshot


class DirectoryWatch:
    """Feeds ``directory`` from ``nc``; ``on_change(keys)`` after every visible change, with the keys of
    the peers that appeared, changed or went."""

    def __init__(self, nc, directory: Directory, on_change: Callable[[Iterable[str]], None]) -> None:
        self.nc, self.directory, self.on_change = nc, directory, on_change
        self._sub = None
        self._live: set[str] = set()  # keys written live since the current snapshot began
        self._removed: set[str] = set()  # keys deleted live since the current snapshot began

    async def start(self) -> None:
        """Subscribe (live updates from now on), then read what the bucket already holds."""
        if self._sub is None:
            self._sub = await self.nc.subscribe(KV_SUBJECTS, cb=self._on_msg, pending_msgs_limit=-1)
        await self.resync()

    async def resync(self) -> None:
        """Read the whole bucket again (at start and after a reconnect: messages may have been missed)
        and drop the peers that are no longer in it."""
        self._live, self._removed = set(), set()
        js = self.nc.jetstream()
        info = await js.stream_info(STREAM, subjects_filter=KV_SUBJECTS)
        subjects = [s for s in (info.state.subjects or {}) if s.startswith(_PREFIX)]
        sem = asyncio.Semaphore(SNAPSHOT_CONCURRENCY)

        async def last(subject: str):
            async with sem:
                try:
                    return await js.get_last_msg(STREAM, subject)
                except NotFoundError:
                    return None  # deleted since the listing

        msgs = await asyncio.gather(*(last(s) for s in subjects))
        seen: set[str] = set()
        changed: list[str] = []
        for subject, m in zip(subjects, msgs):
            key = subject[len(_PREFIX):]
            if m is None or (m.headers or {}).get("KV-Operation") in _REMOVED or key in self._removed:
                continue
            seen.add(key)
            if self.directory.apply(key, m.data or b"", stored=True):
                changed.append(key)
        changed += self.directory.retain(seen | self._live | {self.directory.self_id})
        if changed:
            self.on_change(changed)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_msg(self, msg) -> None:
        key = msg.subject[len(_PREFIX):]
        if (msg.headers or {}).get("KV-Operation") in _REMOVED:
            self._removed.add(key)
            changed = self.directory.apply(key, None)
        else:
            self._live.add(key)
            changed = self.directory.apply(key, msg.data or b"")
        if changed:
            self.on_change((key,))

"""The directory watch: every node's view of the bucket, without a JetStream consumer.

A node reads the directory with a plain subscription to ``$KV.closedmesh.*`` (every put, delete and
purge is a message on those subjects, so it arrives live) and, when the watch starts or the connection
comes back, a snapshot of what the bucket holds. On a private hub the snapshot comes from the hub
(``cm.hub.dir``, answered on this node's inbox); members have no JetStream rights at all. On an open
mesh (a NATS URL, no hub) it is read from the stream (``STREAM.INFO`` with a subject filter, then the
last message of each subject).

Why no consumer, and on a hub no JetStream API at all (issue 10): a consumer's deliver subject is in
the request body, where nats-server's permissions cannot see it, so a member allowed to create
consumers can make the server deliver the stream into any other node's subjects; and every JetStream
API call (a put's acknowledgement included) is answered on the reply subject the caller names, so a
member allowed any of them can make the server write its answer into another node's directory entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable

from nats.js.errors import NotFoundError

from .directory import Directory
from .protocol import BUCKET, DIRECTORY_SUBJECT, KV_SUBJECTS

log = logging.getLogger(__name__)

STREAM = f"KV_{BUCKET}"
_PREFIX = f"$KV.{BUCKET}."
_REMOVED = ("DEL", "PURGE")
SNAPSHOT_CONCURRENCY = 16  # message reads in flight during a snapshot of an open mesh's stream


class DirectoryWatch:
    """Feeds ``directory`` from ``nc``; ``on_change(keys)`` after every visible change, with the keys of
    the peers that appeared, changed or went."""

    def __init__(self, nc, directory: Directory, on_change: Callable[[Iterable[str]], None], hub: bool) -> None:
        self.nc, self.directory, self.on_change, self.hub = nc, directory, on_change, hub
        self._sub = None
        self._live: set[str] = set()  # keys written live since the current snapshot began
        self._removed: set[str] = set()  # keys deleted live since the current snapshot began

    async def start(self) -> None:
        """Subscribe (live updates from now on), then read what the bucket already holds."""
        if self._sub is None:
            self._sub = await self.nc.subscribe(KV_SUBJECTS, cb=self._on_msg)
        await self.resync()

    async def resync(self) -> None:
        """Read the whole bucket again (at start and after a reconnect: messages may have been missed)
        and drop the peers that are no longer in it."""
        self._live, self._removed = set(), set()
        entries = await (self._from_hub() if self.hub else self._from_stream())
        seen: set[str] = set()
        changed: list[str] = []
        for key, raw in entries:
            if key in self._removed:
                continue
            seen.add(key)
            if self.directory.apply(key, raw, stored=True):
                changed.append(key)
        changed += self.directory.retain(seen | self._live | {self.directory.self_id})
        if changed:
            self.on_change(changed)

    async def _from_hub(self) -> list[tuple[str, bytes]]:
        msg = await self.nc.request(DIRECTORY_SUBJECT, b"", timeout=10)
        entries = json.loads(msg.data)["entries"]
        return [(k, v.encode()) for k, v in entries.items() if isinstance(k, str) and isinstance(v, str)]

    async def _from_stream(self) -> list[tuple[str, bytes]]:
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
        return [
            (s[len(_PREFIX) :], m.data or b"")
            for s, m in zip(subjects, msgs, strict=True)
            if m is not None and (m.headers or {}).get("KV-Operation") not in _REMOVED
        ]

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_msg(self, msg) -> None:
        key = msg.subject[len(_PREFIX) :]
        if (msg.headers or {}).get("KV-Operation") in _REMOVED:
            self._removed.add(key)
            changed = self.directory.apply(key, None)
        else:
            self._live.add(key)
            changed = self.directory.apply(key, msg.data or b"")
        if changed:
            self.on_change((key,))


async def keep_watching(watch: DirectoryWatch, on_error: Callable[[Exception], None] | None = None) -> None:
    """Start ``watch`` (again after a reconnect: the snapshot catches up on what was missed while
    disconnected); retried every second until it works. ``on_error`` hears of each interruption."""
    while True:
        try:
            await watch.start()
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if on_error is not None:
                on_error(e)
            else:
                log.debug("directory watch interrupted (%s); watching again", e)
            await asyncio.sleep(1)


async def expire_peers(directory: Directory, on_change: Callable[[list[str]], None]) -> None:
    """Every second, drop the peers whose announcement is older than its TTL (a crashed node never
    deletes its entry); ``on_change`` with their keys."""
    while True:
        await asyncio.sleep(1)
        gone = directory.expire()
        if gone:
            on_change(gone)

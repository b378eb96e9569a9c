"""Keys, usage, rate windows and concurrency leases in the hub's JetStream key-value buckets.

Every entry node keeps a local copy of the key records, kept current by a KV watch: checking a key
costs no mesh traffic (a flood of bad keys never reaches the hub), and a revocation made on one entry
node reaches the others as fast as the watch delivers it (milliseconds). Counters that several entry
nodes change (rate windows, leases, usage) are updated with compare-and-set on the entry's revision,
retried on conflict, so no update is lost and no limit is exceeded by a race between nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import nats
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from .buckets import KEYS_BUCKET, LEASE_BUCKET, RATE_BUCKET, USAGE_BUCKET
from .keys import LEASE_SECONDS, DayUsage, KeyRecord, Leases, RateDecision, RateWindow, take_request, utc_day

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 50
USAGE_FLUSH_SECONDS = 0.2
# While the watch is idle, this often it asks the hub about the keys bucket (a JetStream API request only the
# entry role may make): a role taken back on a live connection shows within this, even with no traffic.
ACCESS_PROBE_SECONDS = 2.0
ROLE_LOST = (
    "this entry node no longer has the entry role in its mesh (the hub refuses it the key buckets), so it "
    "accepts no key until the hub's operator gives the role back (`closedmesh mesh role NODE entry`)"
)


class StoreUnavailable(RuntimeError):
    """The buckets cannot be reached (not connected, or this node lacks the entry role)."""


def _dumps(d: dict) -> bytes:
    return json.dumps(d, separators=(",", ":")).encode()


class KeyStore:
    """The entry buckets seen from one entry node. ``nc`` gives the node's current mesh connection."""

    def __init__(self, nc: Callable[[], nats.NATS | None], clock: Callable[[], float] = time.time) -> None:
        self._nc = nc
        self.clock = clock
        self.records: dict[str, KeyRecord] = {}  # the local copy, kept by the watch
        self.synced = asyncio.Event()  # the watch has delivered every record that existed at its start
        self.kv_ops = 0  # operations sent to the hub: a measure of mesh traffic caused by requests
        self._kv: dict[str, Any] = {}
        self._conn: nats.NATS | None = None
        self._watch_task: asyncio.Task | None = None
        self._flush_task: asyncio.Task | None = None
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._pending: dict[str, DayUsage] = {}  # key id -> usage not written yet (requests, tokens, last use)
        self._pending_day: dict[str, str] = {}
        self._spilled: list[tuple[str, str, DayUsage]] = []  # (key id, day, usage) waiting to be written
        self._wake = asyncio.Event()
        self.denied: str | None = None  # why the hub refuses this node the buckets (ROLE_LOST), None if it does not
        self._refusals = 0  # how many refusals were seen: a watch started before the last one is stale

    # -- connection -------------------------------------------------------------------------------

    async def bucket(self, name: str, probe: bool = False):
        """The bucket's handle. While the hub refuses this node the buckets only the watch (``probe``) asks
        again; everything else is answered at once with the reason."""
        if self.denied is not None and not probe:
            raise StoreUnavailable(self.denied)
        nc = self._nc()
        if nc is None or not nc.is_connected:
            raise StoreUnavailable("this entry node is not connected to its mesh right now")
        if nc is not self._conn:
            self._kv, self._conn = {}, nc
        kv = self._kv.get(name)
        if kv is None:
            try:
                kv = await nc.jetstream(timeout=5).key_value(name)
            except Exception as e:
                raise StoreUnavailable(
                    f"the hub refused access to the '{name}' bucket ({type(e).__name__}): this node needs the "
                    "entry role; invite it with `closedmesh mesh invite --role entry` on the hub"
                ) from None
            self._kv[name] = kv
        return kv

    def access_refused(self, detail: str) -> None:
        """The hub refused this node an operation on the buckets: its entry role was taken back (`closedmesh
        mesh role NODE member`), which changes the permissions of its live connection. The local copy of
        the keys is dropped at once, so that no key is accepted on records this node can no longer keep
        current, and the watch starts again: it succeeds (and keys are accepted again) once the role is
        given back."""
        if self.denied is None:
            log.warning(
                "entry: the hub refused this node the key buckets (%s); every key is refused until the entry "
                "role is given back",
                detail,
            )
        self.denied = ROLE_LOST
        self._refusals += 1
        self.records = {}
        self.synced.clear()
        self._kv = {}

    async def check_access(self) -> None:
        """Raise StoreUnavailable unless this node can use the entry buckets."""
        for name in (KEYS_BUCKET, USAGE_BUCKET, RATE_BUCKET, LEASE_BUCKET):
            await self.bucket(name)

    # -- the local copy ---------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._watch_task = loop.create_task(self._keep_watching(), name="entry-keys-watch")
        self._flush_task = loop.create_task(self._keep_flushing(), name="entry-usage")

    async def close(self) -> None:
        for t in (self._watch_task, self._flush_task):
            if t is not None:
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush_usage(), 5)  # what the last answers used

    async def _keep_watching(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._watch_once()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self.denied is None:
                    log.warning("entry: the watch on the key records stopped (%s); restarting it", e)
                else:
                    log.debug("entry: the key buckets are still refused (%s)", e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)

    async def _watch_once(self) -> None:
        refusals = self._refusals
        kv = await self.bucket(KEYS_BUCKET, probe=True)
        watcher = await kv.watchall()
        conn = self._conn
        reconnects = conn.stats["reconnects"] if conn is not None else 0
        fresh: dict[str, KeyRecord] = {}
        initial = True
        next_probe = time.monotonic() + ACCESS_PROBE_SECONDS
        try:
            while True:
                if self._refusals != refusals:
                    return  # the hub refused this node the buckets meanwhile: watch afresh (if it may)
                try:
                    entry = await watcher.updates(timeout=1)
                except nats.errors.TimeoutError:
                    if conn is not self._nc() or conn is None or not conn.is_connected:
                        return  # a new connection (or none): watch afresh
                    if conn.stats["reconnects"] != reconnects:
                        return  # reconnected (the hub may have restarted, its consumers gone): watch afresh
                    if time.monotonic() >= next_probe:
                        # Refused (the role taken back), this request times out and the connection's error
                        # callback calls access_refused; a watch already running would go on delivering.
                        await kv.status()
                        next_probe = time.monotonic() + ACCESS_PROBE_SECONDS
                    continue
                if entry is None:  # every existing record delivered
                    if initial and self._refusals == refusals:
                        self.records, initial = fresh, False
                        if self.denied is not None:
                            log.warning("entry: the hub gives this node the key buckets again; keys are accepted")
                            self.denied = None
                        self.synced.set()
                    continue
                target = fresh if initial else self.records
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    target.pop(entry.key, None)
                else:
                    try:
                        rec = KeyRecord.from_json(json.loads(entry.value))
                    except (ValueError, TypeError) as e:
                        log.warning("entry: ignoring a damaged key record %s: %s", entry.key[:12], e)
                        continue
                    if rec.id == entry.key:
                        target[entry.key] = rec
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def wait_synced(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.synced.wait(), timeout)
            return True
        except TimeoutError:
            return False

    # -- keys -------------------------------------------------------------------------------------

    async def add_key(self, rec: KeyRecord) -> None:
        kv = await self.bucket(KEYS_BUCKET)
        self.kv_ops += 1
        await kv.create(rec.id, _dumps(rec.to_json()))

    async def revoke(self, kid: str) -> KeyRecord:
        """Mark a key revoked (for good: nothing in the entry code clears ``revoked_at``)."""

        def change(cur: dict | None) -> dict:
            if cur is None:
                raise KeyError(kid)
            return KeyRecord.from_json(cur).revoked(self.clock()).to_json()

        return KeyRecord.from_json(await self._cas(KEYS_BUCKET, kid, change))

    def find(self, who: str) -> KeyRecord:
        """A key by name, id, or the prefix shown in listings (unique among keys not revoked first)."""
        recs = list(self.records.values())
        for pool in ([r for r in recs if r.revoked_at is None], recs):
            hits = [r for r in pool if who in (r.id, r.name) or (len(who) >= 6 and r.prefix.startswith(who))]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise LookupError(f"'{who}' matches {len(hits)} keys; give the prefix shown by `closedmesh keys list`")
        raise LookupError(f"no key is called or starts with '{who}'; see `closedmesh keys list`")

    # -- counters (compare-and-set) ---------------------------------------------------------------

    async def _cas(self, bucket: str, key: str, change: Callable[[dict | None], dict | None]) -> dict:
        """Read ``key``, compute its new value with ``change`` and write it if nobody wrote in between;
        retry otherwise. ``change`` returning None leaves the value as it is (nothing written)."""
        kv = await self.bucket(bucket)
        # One update of a record at a time from this node: requests of one key racing here would only
        # make each other retry. Other entry nodes' updates are what the compare-and-set is for.
        lock = self._locks.setdefault((bucket, key), asyncio.Lock())
        try:
            async with lock:
                return await self._cas_locked(kv, bucket, key, change)
        finally:
            if not lock.locked() and self._locks.get((bucket, key)) is lock:
                del self._locks[(bucket, key)]

    async def _cas_locked(self, kv, bucket: str, key: str, change: Callable[[dict | None], dict | None]) -> dict:
        for attempt in range(CAS_ATTEMPTS):
            if attempt:
                await asyncio.sleep(random.uniform(0, 0.002 * min(attempt, 10)))  # others are writing it too
            self.kv_ops += 1
            try:
                entry = await kv.get(key)
                cur, rev = json.loads(entry.value), entry.revision
            except KeyNotFoundError:
                cur, rev = None, 0
            new = change(cur)
            if new is None:
                return cur or {}
            self.kv_ops += 1
            try:
                if rev:
                    await kv.update(key, _dumps(new), last=rev)
                else:
                    await kv.create(key, _dumps(new))
                return new
            except KeyWrongLastSequenceError:
                continue
            except nats.js.errors.APIError as e:
                if e.err_code in (10071, 10164, 10058):  # wrong last sequence / already exists: raced
                    continue
                raise
        raise StoreUnavailable(f"too many concurrent updates of {bucket}/{key[:12]}; retry")

    async def take_request(self, rec: KeyRecord) -> RateDecision:
        """Count one request against the key's per-minute limit across all entry nodes."""
        assert rec.rpm is not None
        out: list[RateDecision] = []

        def change(cur: dict | None) -> dict | None:
            now = self.clock()
            d = take_request(RateWindow.from_json(cur) if cur else None, rec.rpm or 0, now)
            out[:] = [d]
            return d.window.to_json() if d.allowed else None

        await self._cas(RATE_BUCKET, rec.id, change)
        return out[0]

    async def acquire_lease(self, rec: KeyRecord) -> str | None:
        """A lease on one of the key's concurrent requests, None when all are taken."""
        assert rec.concurrent is not None
        lease = uuid.uuid4().hex[:16]
        got: list[bool] = []

        def change(cur: dict | None) -> dict | None:
            now = self.clock()
            ls = (Leases.from_json(cur) if cur else Leases()).live(now)
            if len(ls.held) >= (rec.concurrent or 0):
                got[:] = [False]
                return None
            ls.held[lease] = now + LEASE_SECONDS
            got[:] = [True]
            return ls.to_json()

        await self._cas(LEASE_BUCKET, rec.id, change)
        return lease if got and got[0] else None

    async def refresh_leases(self, kid: str, leases: set[str]) -> None:
        def change(cur: dict | None) -> dict:
            now = self.clock()
            ls = (Leases.from_json(cur) if cur else Leases()).live(now)
            for lease in leases:
                ls.held[lease] = now + LEASE_SECONDS
            return ls.to_json()

        await self._cas(LEASE_BUCKET, kid, change)

    async def release_lease(self, kid: str, lease: str) -> None:
        def change(cur: dict | None) -> dict | None:
            if cur is None:
                return None
            ls = Leases.from_json(cur).live(self.clock())
            ls.held.pop(lease, None)
            return ls.to_json()

        await self._cas(LEASE_BUCKET, kid, change)

    # -- usage ------------------------------------------------------------------------------------

    async def usage(self, kid: str, day: str | None = None) -> DayUsage:
        kv = await self.bucket(USAGE_BUCKET)
        self.kv_ops += 1
        try:
            e = await kv.get(f"{kid}.{day or utc_day(self.clock())}")
            return DayUsage.from_json(json.loads(e.value))
        except KeyNotFoundError:
            return DayUsage()

    def record_usage(self, kid: str, prompt: int, completion: int) -> None:
        """Count one answer. Answers are added up here and written by ``flush_usage`` a few times a
        second (one compare-and-set per key and flush, however many answers it carries)."""
        now = self.clock()
        day = utc_day(now)
        if kid in self._pending and self._pending_day[kid] != day:
            self._spill(kid)  # the figures of the day that ended are written under that day
        self._pending[kid] = self._pending.get(kid, DayUsage()).add(prompt, completion, now)
        self._pending_day[kid] = day
        self._wake.set()

    def _spill(self, kid: str) -> None:
        old, day = self._pending.pop(kid), self._pending_day.pop(kid)
        self._spilled.append((kid, day, old))

    async def flush_usage(self) -> None:
        """Write the usage counted since the last flush. What cannot be written now stays for the next."""
        batch = [(kid, self._pending_day[kid], u) for kid, u in self._pending.items()] + self._spilled
        self._pending, self._pending_day, self._spilled = {}, {}, []
        for kid, day, u in batch:

            def change(cur: dict | None, u: DayUsage = u) -> dict:
                return (DayUsage.from_json(cur) if cur else DayUsage()).merge(u).to_json()

            try:
                await self._cas(USAGE_BUCKET, f"{kid}.{day}", change)
            except Exception as e:
                # kept, and written once the buckets can be reached (or the role is given back)
                (log.debug if self.denied else log.warning)("entry: usage not written yet (%s); retrying", e)
                self._spilled.append((kid, day, u))

    async def _keep_flushing(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(USAGE_FLUSH_SECONDS)  # answers that finish meanwhile go in the same write
            self._wake.clear()
            await self.flush_usage()
            if self._spilled:
                self._wake.set()
                await asyncio.sleep(1)

"""Model downloads: resumable, verified, cancellable HTTP transfers (aiohttp).

Why the transfer is ours and not ``huggingface_hub.hf_hub_download``: that function gives no progress
callback and cannot be cancelled, and it does not check the file's sha256 — a corrupted body is
accepted silently (tried: a body corrupted in transit is kept as is). A user pulling a multi-gigabyte
model over a home connection needs all three, so Hugging Face specifics (endpoint, token, cache) live in
:mod:`runtime.models.hf` and the bytes are moved here.

What a pull does
    1. ``HEAD`` the URL, following redirects one by one. Hugging Face answers the ``/resolve/`` URL with
       a redirect to a CDN that carries ``X-Linked-Etag`` (the LFS sha256, quoted) and
       ``X-Linked-Size``; they are read from that first response. The expected sha256 and size come
       from the job when it has them, else from those headers (or ``Content-Length``).
    2. Check free disk space for what is left to fetch (and for the whole file on the models folder's
       disk when it is another disk than the partial folder's): fail before transferring when short.
    3. ``GET`` into ``<partial_dir>/<filename>.partial``, next to a JSON sidecar naming what those bytes
       are (url, sha256, size, etag). A partial left by an earlier run — even of an earlier process —
       is resumed with ``Range: bytes=N-`` when its sidecar still matches the remote file; the bytes
       already on disk are re-hashed first so the sha256 is computed over the whole file while
       writing. A 200 to a Range request (the server ignored it) restarts from 0; a 206 from the wrong
       offset, a 416, or a remote file that changed (size or etag) starts over.
    4. Connection errors, timeouts, 408/429/5xx: retried with exponential backoff, each try resuming
       from what is on disk; a try that made progress resets the count. 401/403 (a gated or private
       repo: set the Hugging Face token) and 404 fail at once with a plain message.
    5. Verify size and sha256, then rename atomically into ``models_dir`` and write the
       ``<filename>.sha256`` marker (``"<sha256> <size> <mtime_ns>"``, as embedded.py does) so the file
       is not re-hashed on the next start. ``models_dir`` only ever holds complete, verified files.

What becomes of the partial file
    - network trouble after the retries run out, 401/403/404: kept; the next pull resumes.
    - :meth:`Downloader.close` or the pulling task being cancelled (the node shutting down): kept.
    - :meth:`Downloader.cancel` (the user said stop): removed.
    - checksum or size mismatch: moved to ``<models_dir>/quarantine/`` for inspection, never used.
    - the disk filled up (ENOSPC/EDQUOT): removed. The space is what the user needs back, and a hidden
      partial in a cache folder is the last place they would look for it; free space first, then the
      pull starts over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import aiohttp

from .. import __version__
from ..errors import NodeError
from .integrity import HASH_BLOCK, HashStopped, is_verified, mark_verified, sha256_file

log = logging.getLogger(__name__)

State = Literal["queued", "downloading", "verifying", "done", "error", "cancelled"]

PROGRESS_INTERVAL = 0.2  # seconds between progress events while bytes flow (state changes always emit)
RATE_TIME_CONSTANT = 3.0  # seconds: how quickly the smoothed rate follows the measured one
QUARANTINE = "quarantine"

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_MAX_REDIRECTS = 10
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)
_DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


# -- errors --------------------------------------------------------------------------------------------


class DownloadError(NodeError):
    """A pull failed. The message is written for the user: what happened and what to do."""

    default_status = 502
    default_code = "download_failed"


class AccessDenied(DownloadError):
    """HTTP 401/403: the file needs a (different) Hugging Face token."""

    default_status = 403
    default_code = "access_denied"


class RemoteNotFound(DownloadError):
    """HTTP 404: no such repository, file or revision."""

    default_status = 404
    default_code = "model_not_found"


class RemoteFileMismatch(DownloadError):
    """The server offers a different file (sha256 or size) than the job expects; nothing was fetched."""


class ChecksumMismatch(DownloadError):
    """The downloaded bytes do not match the expected sha256 or size; the file was quarantined."""

    def __init__(self, message: str, quarantined: Path | None = None):
        super().__init__(message)
        self.quarantined = quarantined


class DiskFullError(DownloadError):
    """Not enough free disk space, found before the transfer or when a write failed with ENOSPC."""

    default_status = 507
    default_code = "disk_full"


class DownloadCancelled(DownloadError):
    """The pull was cancelled (partial removed) or stopped (partial kept for the next pull)."""

    def __init__(self, message: str, kept_partial: bool):
        super().__init__(message)
        self.kept_partial = kept_partial


class _Retryable(Exception):
    """A transient failure: try again after a backoff, resuming from the bytes on disk."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _StartOver(_Retryable):
    """The partial file does not belong to the remote file any more: discard it, probe again."""


_Stopped = HashStopped  # raised inside a worker thread when the transfer is being torn down


# -- data ----------------------------------------------------------------------------------------------


@dataclass
class DownloadJob:
    id: str  # the model id; one pull per id at a time
    url: str
    filename: str  # the final file name in the models folder
    expected_sha256: str | None = None
    expected_size: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # e.g. Authorization: kept out of logs

    def __post_init__(self) -> None:
        name = self.filename
        if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
            raise ValueError(f"download file name must be a plain file name, got {name!r}")
        if self.expected_sha256 is not None:
            sha = self.expected_sha256.strip().lower()
            if not _SHA256.match(sha):
                raise ValueError(f"expected_sha256 must be 64 hex digits, got {self.expected_sha256!r}")
            self.expected_sha256 = sha
        if self.expected_size is not None and self.expected_size < 0:
            raise ValueError("expected_size must not be negative")


@dataclass
class DownloadProgress:
    id: str
    state: State = "queued"
    total_bytes: int | None = None  # None while the size is unknown
    done_bytes: int = 0  # bytes of the file on disk, including those resumed from an earlier run
    rate_bps: float = 0.0  # smoothed bytes per second
    eta_seconds: float | None = None
    error: str | None = None  # plain words, for the user; set in the "error" and "cancelled" states
    path: Path | None = None  # the installed file, once "done"


@dataclass
class _Remote:
    """What the server says about the file."""

    sha256: str | None = None
    size: int | None = None
    etag: str | None = None

    def absorb_linked(self, headers: Mapping[str, str]) -> None:
        """Take Hugging Face's X-Linked-* headers from the first response that has them."""
        linked_etag = headers.get("X-Linked-Etag")
        if linked_etag and self.etag is None:
            self.etag = _unquote_etag(linked_etag)
            if _SHA256.match(self.etag.lower()):
                self.sha256 = self.etag.lower()
        linked_size = headers.get("X-Linked-Size")
        if linked_size and self.size is None:
            self.size = _int_or_none(linked_size)


def _unquote_etag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def _int_or_none(value: str | None) -> int | None:
    try:
        n = int(value) if value is not None else None
    except ValueError:
        return None
    return n if n is not None and n >= 0 else None


def format_bytes(n: int | float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "the connection timed out"
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# -- the verified marker (same format as embedded.py's) -------------------------------------------------


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return  # directories cannot be opened for fsync on Windows; NTFS journals the rename
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- one transfer's state --------------------------------------------------------------------------------


class _Transfer:
    """The file, hash and progress of one pull. Disk work runs on a single worker thread per transfer
    (so writes stay ordered and never block the event loop); teardown waits for that thread before
    touching the file, so a cancelled pull never races its own last write."""

    def __init__(self, downloader: Downloader, job: DownloadJob):
        self.dl = downloader
        self.job = job
        self.partial = downloader.partial_dir / f"{job.filename}.partial"
        self.sidecar = downloader.partial_dir / f"{job.filename}.partial.json"
        self.target = downloader.models_dir / job.filename
        self.remote: _Remote | None = None
        self.sha256: str | None = job.expected_sha256
        self.size: int | None = job.expected_size
        self.file: Any = None  # raw (unbuffered) file: on-disk size == self.have after every write
        self.hasher = hashlib.sha256()
        self.have = 0
        self.writing = False  # a write started and has not completed: bytes past `have` may be on disk
        self.installed = False
        self.session: aiohttp.ClientSession | None = None
        self._stop = threading.Event()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"download-{job.id}")
        self._last_work: concurrent.futures.Future | None = None
        self.progress = DownloadProgress(job.id, total_bytes=job.expected_size)
        downloader._progress[job.id] = self.progress  # live: Downloader.progress() reads it between events
        self._last_emit = 0.0
        self._trailing: asyncio.TimerHandle | None = None
        self._rate_time = time.monotonic()
        self._rate_bytes = 0

    # disk work ---------------------------------------------------------------------------------------

    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._last_work = self._worker.submit(fn, *args)
        return await asyncio.wrap_future(self._last_work)

    def _open(self, keep: int) -> None:
        self._close()
        if keep:
            self.file = open(self.partial, "r+b", buffering=0)
            self.file.truncate(keep)
            self.file.seek(keep)
        else:
            self.file = open(self.partial, "wb", buffering=0)
            self.hasher = hashlib.sha256()

    def _rehash(self, n: int) -> None:
        """Hash the first n bytes already on disk, so the sha256 covers the whole file."""
        self.hasher = hashlib.sha256()
        with open(self.partial, "rb") as f:
            left = n
            while left:
                if self._stop.is_set():
                    raise _Stopped
                block = f.read(min(HASH_BLOCK, left))
                if not block:
                    raise OSError(errno.EIO, f"{self.partial} is shorter than {n} bytes")
                self.hasher.update(block)
                left -= len(block)

    def _write(self, data: bytes) -> None:
        self.writing = True
        view = memoryview(data)
        while view:
            written = self.file.write(view)
            view = view[written:]
        self.hasher.update(data)
        self.writing = False

    def _truncate(self) -> None:
        self.file.truncate(0)
        self.file.seek(0)
        self.hasher = hashlib.sha256()

    def _close(self, fsync: bool = False) -> None:
        if self.file is not None:
            try:
                if fsync:
                    os.fsync(self.file.fileno())
            finally:
                self.file.close()
                self.file = None

    async def write(self, data: bytes) -> None:
        await self.in_thread(self._write, data)
        self.have += len(data)
        self.advanced()

    async def truncate(self) -> None:
        await self.in_thread(self._truncate)
        self.have = 0
        self.advanced()

    async def settle(self) -> None:
        """Stop disk work and close the file, cutting off bytes past ``have`` left by a failed write."""
        self._stop.set()
        if self._last_work is not None and not self._last_work.done():
            try:
                await asyncio.wrap_future(self._last_work)
            except Exception:  # its caller is gone; what failed no longer matters
                pass
        if self.file is not None:
            if self.writing:
                try:
                    self.file.truncate(self.have)
                except OSError:
                    pass
            self._close()
        self._worker.shutdown(wait=False)

    def remove_partial(self) -> None:
        for p in (self.partial, self.sidecar):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def write_sidecar(self) -> None:
        record = {
            "id": self.job.id,
            "url": self.job.url,
            "sha256": self.sha256,
            "size": self.size,
            "etag": self.remote.etag if self.remote else None,
        }
        tmp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.sidecar)

    def read_sidecar(self) -> dict | None:
        try:
            record = json.loads(self.sidecar.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    # progress ----------------------------------------------------------------------------------------

    def advanced(self) -> None:
        now = time.monotonic()
        p = self.progress
        p.done_bytes, p.total_bytes = self.have, self.size
        if self.have < self._rate_bytes:  # started over: measure from here
            self._rate_time, self._rate_bytes = now, self.have
        dt = now - self._rate_time
        if dt >= PROGRESS_INTERVAL:
            measured = (self.have - self._rate_bytes) / dt
            weight = 1.0 if p.rate_bps == 0 else 1 - math.exp(-dt / RATE_TIME_CONSTANT)
            p.rate_bps += weight * (measured - p.rate_bps)
            self._rate_time, self._rate_bytes = now, self.have
        if self.size is not None and p.rate_bps > 0:
            p.eta_seconds = max(self.size - self.have, 0) / p.rate_bps
        else:
            p.eta_seconds = None
        since = now - self._last_emit
        if since >= PROGRESS_INTERVAL:
            self.emit()
        elif self._trailing is None:  # deliver this state too, even if no more bytes come for a while
            self._trailing = asyncio.get_running_loop().call_later(PROGRESS_INTERVAL - since, self.emit)

    def set_state(self, state: State, error: str | None = None, path: Path | None = None) -> None:
        p = self.progress
        p.state, p.error, p.path = state, error, path
        p.done_bytes, p.total_bytes = self.have, self.size
        if state in ("verifying", "done"):
            p.eta_seconds = 0.0
        elif state in ("error", "cancelled"):
            p.eta_seconds, p.rate_bps = None, 0.0
        self.emit()

    def emit(self) -> None:
        if self._trailing is not None:
            self._trailing.cancel()
            self._trailing = None
        self._last_emit = time.monotonic()
        self.dl._publish(replace(self.progress))


@dataclass
class _Active:
    job: DownloadJob
    task: asyncio.Task | None = None
    started: bool = False  # a task cancelled before its first step never runs its cleanup
    waiters: int = 0
    reason: Literal["cancel", "stop"] | None = None


# -- the downloader --------------------------------------------------------------------------------------


class Downloader:
    """Pulls files into ``models_dir``, keeping partial files in ``partial_dir`` (a cache folder).

    Several pulls run at once (up to ``max_concurrent``; the rest wait in the "queued" state). Pulling an
    id that is already being pulled joins that pull. ``on_progress`` is called with a copy of the
    progress at most every ``PROGRESS_INTERVAL`` while bytes flow and at every state change; it runs
    on the event loop, so it must be quick.
    """

    def __init__(
        self,
        models_dir: Path,
        partial_dir: Path,
        on_progress: Callable[[DownloadProgress], None] | None = None,
        *,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        max_concurrent: int = 4,
        connect_timeout: float = 30.0,
        read_timeout: float = 60.0,
    ):
        self.models_dir = Path(models_dir)
        self.partial_dir = Path(partial_dir)
        self.on_progress = on_progress
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._slots = asyncio.Semaphore(max_concurrent)
        self._active: dict[str, _Active] = {}
        self._progress: dict[str, DownloadProgress] = {}

    # public ------------------------------------------------------------------------------------------

    async def pull(self, job: DownloadJob) -> Path:
        """Download, verify and install ``job``; return the installed path. Raises a
        :class:`DownloadError` subclass with a message for the user when it cannot."""
        active = self._active.get(job.id)
        if active is not None:
            if (active.job.url, active.job.filename) != (job.url, job.filename):
                raise DownloadError(
                    f"'{job.id}' is already being downloaded from {active.job.url} as {active.job.filename}; "
                    f"wait for that download or cancel it first"
                )
        else:
            for other in self._active.values():
                if other.job.filename == job.filename:
                    raise DownloadError(
                        f"{job.filename} is already being downloaded for '{other.job.id}'; wait for that "
                        f"download or cancel it first"
                    )
            active = _Active(job)
            self._active[job.id] = active
            active.task = asyncio.create_task(self._run(active), name=f"download {job.id}")
            active.task.add_done_callback(functools.partial(self._finished, active))
        task = active.task
        assert task is not None  # set with the entry, in the same turn of the loop
        active.waiters += 1
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The caller went away. When nobody else waits for this pull, stop it (the partial is kept).
            if active.waiters == 1:
                self._interrupt(active, "stop")
            raise
        finally:
            active.waiters -= 1

    def cancel(self, id: str) -> bool:
        """Cancel the pull of ``id`` and remove its partial file. False when no such pull is running."""
        active = self._active.get(id)
        return active is not None and self._interrupt(active, "cancel")

    def progress(self, id: str) -> DownloadProgress | None:
        """The latest progress of ``id`` (also after it ended), or None when it was never pulled."""
        p = self._progress.get(id)
        return replace(p) if p is not None else None

    async def close(self) -> None:
        """Stop every pull, keeping the partial files so that the next run resumes them."""
        tasks = [a.task for a in list(self._active.values()) if self._interrupt(a, "stop") and a.task]
        if tasks:
            await asyncio.wait(tasks)

    async def __aenter__(self) -> Downloader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # internals ---------------------------------------------------------------------------------------

    @staticmethod
    def _interrupt(active: _Active, reason: Literal["cancel", "stop"]) -> bool:
        """Ask a running pull to end. A cancel outranks a stop asked for earlier (its cleanup reads
        the reason once the transfer has settled); the task is cancelled only once."""
        if active.task is None or active.task.done():
            return False
        first = active.reason is None
        if first or reason == "cancel":
            active.reason = reason
        if first and active.started:
            active.task.cancel()
        return True

    def _publish(self, progress: DownloadProgress) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(progress)
            except Exception:  # a broken listener must not break the download
                log.exception("download progress listener failed")

    def _finished(self, active: _Active, _task: asyncio.Task) -> None:
        if self._active.get(active.job.id) is active:
            del self._active[active.job.id]
        task = active.task
        if task is not None and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" noise when nobody waits

    async def _run(self, active: _Active) -> Path:
        active.started = True
        job = active.job
        t = _Transfer(self, job)
        t.emit()  # queued
        try:
            if active.reason is not None:  # interrupted before it began
                raise asyncio.CancelledError
            async with self._slots:
                path = await self._download(t)
            await t.settle()
            return path
        except asyncio.CancelledError:
            await t.settle()
            if t.installed:  # cancelled after the verified file was already in place: it is done
                t.set_state("done", path=t.target)
                return t.target
            if active.reason == "cancel":
                await asyncio.to_thread(t.remove_partial)
                message, kept = f"the download of {job.filename} was cancelled", False
            else:
                message, kept = (
                    (
                        f"the download of {job.filename} was stopped; {format_bytes(t.have)} are kept "
                        f"in {t.partial} and the next pull resumes from there"
                    ),
                    True,
                )
            log.info("%s", message)
            t.set_state("cancelled", error=message)
            raise DownloadCancelled(message, kept_partial=kept) from None
        except DownloadError as e:
            await t.settle()
            t.set_state("error", error=str(e))
            raise
        except OSError as e:
            await t.settle()
            if e.errno in _DISK_FULL:
                await asyncio.to_thread(t.remove_partial)
                where = Path(e.filename) if e.filename else self.partial_dir
                free = _free_bytes(where)
                of = format_bytes(t.size) if t.size is not None else "an unknown size"
                message = (
                    f"the disk filled up while downloading {job.filename} ({format_bytes(t.have)} of {of} "
                    f"written, {format_bytes(free)} free on {where}). The partial download was removed "
                    f"so that it does not hold on to the space; free some space and pull again."
                )
                error: DownloadError = DiskFullError(message)
            else:
                error = DownloadError(
                    f"could not write the download of {job.filename}: {e.strerror or e} "
                    f"({e.filename or self.partial_dir})"
                )
            t.set_state("error", error=str(error))
            raise error from e
        except Exception as e:
            await t.settle()
            log.exception("download of %s failed unexpectedly", job.filename)
            error = DownloadError(f"the download of {job.filename} failed unexpectedly: {_describe(e)}")
            t.set_state("error", error=str(error))
            raise error from e

    async def _download(self, t: _Transfer) -> Path:
        job = t.job
        await asyncio.to_thread(self._make_dirs)
        if job.expected_sha256 and await self._already_installed(t, job.expected_sha256):
            return t.target
        headers = {"User-Agent": f"closedmesh/{__version__}", "Accept-Encoding": "identity", **job.headers}
        async with aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False, trust_env=True) as session:
            t.session = session
            t.set_state("downloading")
            tries = 0
            while True:
                before = t.have
                try:
                    if t.remote is None:
                        t.remote = await self._probe(t, headers)
                        if await self._prepare(t):
                            return t.target
                    await self._fetch(t, headers)
                    break
                except _Retryable as e:
                    if isinstance(e, _StartOver):
                        await t.in_thread(t._close)
                        await asyncio.to_thread(t.remove_partial)
                        t.have, t.remote = 0, None
                        t.advanced()
                    tries = 1 if t.have > before else tries + 1
                    if tries > self.max_retries:
                        kept = (
                            f" {format_bytes(t.have)} are kept and the next pull resumes from there." if t.have else ""
                        )
                        raise DownloadError(
                            f"could not download {job.filename} from {_host(job.url)} after {tries} tries: {e}.{kept}"
                        ) from e
                    delay = min(self.backoff * 2 ** (tries - 1), self.max_backoff) * random.uniform(0.75, 1.0)
                    if e.retry_after is not None:
                        delay = max(delay, min(e.retry_after, self.max_backoff))
                    log.warning(
                        "download of %s: %s; retrying in %.1fs (try %d of %d)",
                        job.filename,
                        e,
                        delay,
                        tries + 1,
                        self.max_retries + 1,
                    )
                    await asyncio.sleep(delay)
        await self._install(t)
        return t.target

    def _make_dirs(self) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.partial_dir.mkdir(parents=True, exist_ok=True)

    async def _already_installed(self, t: _Transfer, sha256: str) -> bool:
        """True when the models folder already holds the verified file (checked by hashing it once
        when it has no up-to-date marker)."""
        target = t.target
        if is_verified(target, sha256):
            found = True
        elif target.is_file() and (t.size is None or target.stat().st_size == t.size):
            found = await t.in_thread(sha256_file, target, t._stop) == sha256
            if found:
                await asyncio.to_thread(mark_verified, target, sha256)
        else:
            found = False
        if found:
            t.have = t.size = target.stat().st_size
            t.installed = True
            t.set_state("done", path=target)
        return found

    async def _open(
        self, t: _Transfer, method: str, url: str, headers: Mapping[str, str], remote: _Remote
    ) -> aiohttp.ClientResponse:
        """Send the request, following redirects one by one: Hugging Face's X-Linked-* headers are on
        the redirect itself, and the token must not follow a redirect to another host (the CDN)."""
        assert t.session is not None
        start = _origin(url)
        for _ in range(_MAX_REDIRECTS + 1):
            hop_headers = (
                dict(headers)
                if _origin(url) == start
                else {k: v for k, v in headers.items() if k.lower() != "authorization"}
            )
            try:
                resp = await t.session.request(method, url, headers=hop_headers, allow_redirects=False)
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
                raise _Retryable(f"could not reach {_host(url)} ({_describe(e)})") from e
            remote.absorb_linked(resp.headers)
            location = resp.headers.get("Location")
            if resp.status in _REDIRECT_STATUSES and location:
                resp.release()
                url = urljoin(url, location)
                continue
            return resp
        raise DownloadError(f"{t.job.url} redirects more than {_MAX_REDIRECTS} times; giving up")

    async def _probe(self, t: _Transfer, headers: Mapping[str, str]) -> _Remote:
        remote = _Remote()
        resp = await self._open(t, "HEAD", t.job.url, headers, remote)
        async with resp:
            if resp.status in (405, 501):  # no HEAD here: the GET will tell
                return remote
            if resp.status != 200:
                self._raise_for_status(t, resp)
            if remote.etag is None and resp.headers.get("ETag"):
                remote.etag = _unquote_etag(resp.headers["ETag"])
            if remote.size is None and "Content-Encoding" not in resp.headers:
                remote.size = _int_or_none(resp.headers.get("Content-Length"))
        return remote

    async def _prepare(self, t: _Transfer) -> bool:
        """Settle the expected sha256 and size, check the disk, and open the partial file (resuming it
        when its sidecar matches the remote file). True when the verified file is already installed."""
        job, remote = t.job, t.remote
        assert remote is not None
        if job.expected_sha256 and remote.sha256 and remote.sha256 != job.expected_sha256:
            raise RemoteFileMismatch(
                f"the server offers a different {job.filename} than expected (its sha256 is {remote.sha256}, "
                f"expected {job.expected_sha256}); the model may have been updated upstream. Nothing was "
                f"downloaded."
            )
        if job.expected_size is not None and remote.size is not None and remote.size != job.expected_size:
            raise RemoteFileMismatch(
                f"the server offers a different {job.filename} than expected ({format_bytes(remote.size)}, "
                f"expected {format_bytes(job.expected_size)}); the model may have been updated upstream. "
                f"Nothing was downloaded."
            )
        t.sha256 = job.expected_sha256 or remote.sha256
        t.size = job.expected_size if job.expected_size is not None else remote.size
        t.progress.total_bytes = t.size
        if not job.expected_sha256 and t.sha256 and await self._already_installed(t, t.sha256):
            return True

        have = t.partial.stat().st_size if t.partial.is_file() else 0
        if have:
            why_not = self._why_not_resume(t, have)
            if why_not:
                log.info("not resuming %s: %s; starting over", t.partial, why_not)
                have = 0
        self._check_space(t, already=have)
        await t.in_thread(t._open, have)
        t.have = have
        await t.in_thread(t.write_sidecar)
        if have:
            log.info("resuming %s from %s", job.filename, format_bytes(have))
            await t.in_thread(t._rehash, have)
        t.advanced()
        return False

    def _why_not_resume(self, t: _Transfer, have: int) -> str | None:
        record = t.read_sidecar()
        remote = t.remote
        assert remote is not None
        if record is None:
            return "there is no record of what it is"
        if record.get("url") != t.job.url:
            return "it was downloaded from another URL"
        if t.sha256 and record.get("sha256") and record["sha256"] != t.sha256:
            return "the file changed on the server (sha256)"
        if t.size is not None and record.get("size") is not None and record["size"] != t.size:
            return "the file changed on the server (size)"
        if not t.sha256 and remote.etag and record.get("etag") and record["etag"] != remote.etag:
            return "the file changed on the server (etag)"
        if t.size is not None and have > t.size:
            return "it is larger than the file"
        return None

    def _check_space(self, t: _Transfer, already: int) -> None:
        if t.size is None:
            return  # unknown size: a full disk is caught when a write fails
        needs = [(self.partial_dir, t.size - already)]
        if _device(self.models_dir) != _device(self.partial_dir):
            needs.append((self.models_dir, t.size))  # the final move is a copy to another disk
        for folder, need in needs:
            free = _free_bytes(folder)
            if need > free:
                raise DiskFullError(
                    f"not enough disk space to download {t.job.filename}: it needs {format_bytes(need)}, "
                    f"{format_bytes(free)} free on {folder}. Free some space (or choose a "
                    f"models folder on a larger disk) and pull again."
                )

    async def _fetch(self, t: _Transfer, base_headers: Mapping[str, str]) -> None:
        if t.size is not None and t.have == t.size:
            return  # the partial is complete (an earlier run stopped before verifying)
        headers = dict(base_headers)
        if t.have:
            headers["Range"] = f"bytes={t.have}-"
        seen = _Remote()
        resp = await self._open(t, "GET", t.job.url, headers, seen)
        async with resp:
            remote = t.remote
            assert remote is not None
            if (seen.sha256 and remote.sha256 and seen.sha256 != remote.sha256) or (
                seen.size is not None and remote.size is not None and seen.size != remote.size
            ):
                raise _StartOver("the file changed on the server")
            if resp.status == 416:
                total = _parse_content_range(resp.headers.get("Content-Range"))[2]
                if t.have and total == t.have:
                    t.size = total
                    return  # we already have every byte
                raise _StartOver(f"the server could not resume from byte {t.have}")
            if resp.status == 206:
                first, _, total = _parse_content_range(resp.headers.get("Content-Range"))
                if first != t.have:
                    raise _StartOver(f"the server resumed from byte {first} instead of {t.have}")
                if total is not None and t.size is not None and total != t.size:
                    raise _StartOver("the file changed on the server (size)")
                if t.size is None and total is not None:
                    t.size = total
            elif resp.status == 200:
                if t.have:
                    log.info("%s ignored the Range request: starting %s over", _host(str(resp.url)), t.job.filename)
                    await t.truncate()
                length = _int_or_none(resp.headers.get("Content-Length"))
                if length is not None and t.size is not None and length != t.size:
                    raise _StartOver("the file changed on the server (size)")
                if t.size is None:
                    t.size = length
            else:
                self._raise_for_status(t, resp)
            await self._stream(t, resp)

    async def _stream(self, t: _Transfer, resp: aiohttp.ClientResponse) -> None:
        # Each piece goes to disk as it arrives, so the partial file always holds every byte received:
        # a stop, cut or crash loses nothing, and a resume asks for exactly the rest.
        try:
            async for data in resp.content.iter_any():
                if t.size is not None and t.have + len(data) > t.size:
                    raise _StartOver(f"the server sent more than the {format_bytes(t.size)} announced")
                await t.write(data)
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            raise _Retryable(f"the connection broke after {format_bytes(t.have)} ({_describe(e)})") from e
        if t.size is not None and t.have < t.size:
            raise _Retryable(f"the connection closed after {format_bytes(t.have)} of {format_bytes(t.size)}")

    def _raise_for_status(self, t: _Transfer, resp: aiohttp.ClientResponse) -> None:
        status = resp.status
        detail = resp.headers.get("X-Error-Message") or resp.reason or ""
        said = f" (HTTP {status}{': ' + detail if detail else ''})"
        job = t.job
        if status in (401, 403):
            if any(k.lower() == "authorization" for k in job.headers):
                raise AccessDenied(
                    f"access to {job.filename} was refused with your Hugging Face token{said}. Check that "
                    f"the token is valid and allows reading, and that you accepted the model's terms on its "
                    f"Hugging Face page."
                )
            raise AccessDenied(
                f"{job.filename} needs a Hugging Face token{said}: the model is gated or private. Accept "
                f"its terms on its Hugging Face page, set your Hugging Face token (in ClosedMesh's settings, "
                f"or the HF_TOKEN environment variable) and pull again."
            )
        if status == 404:
            raise RemoteNotFound(
                f"{job.filename} was not found at {job.url}{said}. Check the repository, file name and revision."
            )
        if status in _RETRY_STATUSES or status >= 500:
            retry_after = _int_or_none(resp.headers.get("Retry-After"))
            raise _Retryable(
                f"{_host(str(resp.url))} answered{said}", float(retry_after) if retry_after is not None else None
            )
        raise DownloadError(f"could not download {job.filename}: {_host(str(resp.url))} answered{said}.")

    async def _install(self, t: _Transfer) -> None:
        """Verify, then move into the models folder atomically; quarantine a file that fails."""
        t.set_state("verifying")
        await t.in_thread(t._close, True)
        got = t.hasher.hexdigest()
        problem = None
        if t.size is not None and t.have != t.size:
            problem = f"it is {format_bytes(t.have)} instead of {format_bytes(t.size)}"
        elif t.sha256 and got != t.sha256:
            problem = f"its sha256 is {got}, expected {t.sha256}"
        if problem:
            quarantined = await t.in_thread(self._quarantine, t, got)
            raise ChecksumMismatch(
                f"the downloaded {t.job.filename} is corrupt: {problem}. It was not installed; it was moved "
                f"to {quarantined}. Pull again to download it anew; if this repeats, the file on the server "
                f"or the connection is at fault.",
                quarantined,
            )
        if not t.sha256:
            log.warning("no sha256 is known for %s: only its size was checked", t.job.filename)
        await t.in_thread(self._move_into_place, t, got)
        t.installed = True
        log.info("downloaded %s (%s, sha256 %s)", t.job.filename, format_bytes(t.have), got)
        t.set_state("done", path=t.target)

    def _quarantine(self, t: _Transfer, got: str) -> Path:
        folder = self.models_dir / QUARANTINE
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / f"{t.job.filename}.{got[:12]}"
        shutil.move(str(t.partial), str(dest))
        t.sidecar.unlink(missing_ok=True)
        return dest

    def _move_into_place(self, t: _Transfer, sha256: str) -> None:
        if _device(self.partial_dir) == _device(self.models_dir):
            os.replace(t.partial, t.target)
        else:  # another disk: copy beside the target, then rename, so the target is never half-written
            incoming = self.models_dir / f".{t.job.filename}.incoming"
            try:
                shutil.copyfile(t.partial, incoming)
                with open(incoming, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(incoming, t.target)
            except BaseException:
                incoming.unlink(missing_ok=True)
                raise
            t.partial.unlink()
        t.sidecar.unlink(missing_ok=True)
        _fsync_dir(self.models_dir)
        mark_verified(t.target, sha256)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None, None, None
    first, last, total = m.groups()
    return (int(first) if first else None, int(last) if last else None, int(total) if total and total != "*" else None)


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _device(path: Path) -> int:
    return os.stat(path).st_dev


def _free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free

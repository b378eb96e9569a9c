"""A local stand-in for the Hugging Face Hub and its CDN, for download tests.

It answers the way huggingface.co does for an LFS file:

- ``HEAD``/``GET /{owner}/{repo}/resolve/{revision}/{file}`` → ``302`` to ``/cdn/{file}``, the redirect
  carrying ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size``, ``ETag`` and ``X-Repo-Commit``; unknown
  files get ``404`` with ``X-Error-Code: EntryNotFound``; gated files ``401``/``403`` with
  ``X-Error-Code: GatedRepo``.
- ``HEAD``/``GET /cdn/{file}`` → the bytes, with ``Accept-Ranges: bytes``; a ``Range: bytes=N-`` GET
  gets ``206`` with ``Content-Range``, an unsatisfiable one ``416``.

``FakeHub.knobs`` breaks it in the ways real networks and servers do (see :class:`Knobs`), and
``FakeHub.requests`` records every request with the body bytes sent, so tests can assert what
happened on the wire (a Range request was made, a file was sent once).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Knobs:
    cut_after: int | None = None  # a CDN GET drops the connection after sending this many body bytes…
    cut_times: int = 1  # …for this many GETs; later ones are served whole
    stall_after: int | None = None  # a CDN GET stops sending after this many bytes until release_stall()
    corrupt_offset: int | None = None  # the byte at this file offset is flipped in every body served
    ignore_range: bool = False  # answer Range GETs with the whole file (200), as some servers do
    token: str | None = None  # /resolve/ needs "Authorization: Bearer <token>": 401 without, 403 wrong
    rate_bps: int | None = None  # throttle CDN bodies to this many bytes per second
    send_sizes: bool = True  # False: no X-Linked-Size, no Content-Length (chunked bodies)
    fail_statuses: list[int] = field(default_factory=list)  # the next CDN GETs answer these, one each
    cdn_host: str | None = None  # host name the redirect points at (another origin than the Hub's)


@dataclass
class ServedFile:
    filename: str
    source: Path | bytes
    sha256: str
    size: int

    def read(self, offset: int, n: int) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[offset:offset + n]
        with open(self.source, "rb") as f:
            f.seek(offset)
            return f.read(n)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    sent: int = 0  # body bytes sent


class FakeHub:
    def __init__(self) -> None:
        self.files: dict[tuple[str, str], ServedFile] = {}
        self.knobs = Knobs()
        self.requests: list[Request] = []
        self.active_bodies = 0
        self.max_active_bodies = 0
        self._closing = False
        self._runner: web.AppRunner | None = None
        self.port = 0

    # setup -------------------------------------------------------------------------------------------

    def add(self, repo: str, filename: str, source: Path | bytes, sha256: str | None = None) -> ServedFile:
        """Serve ``source`` as ``filename`` of ``repo`` (replacing what was there: "the file changed")."""
        if sha256 is None:
            h = hashlib.sha256()
            if isinstance(source, bytes):
                h.update(source)
            else:
                with open(source, "rb") as f:
                    while block := f.read(1 << 22):
                        h.update(block)
            sha256 = h.hexdigest()
        size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        served = ServedFile(filename, source, sha256, size)
        self.files[(repo, filename)] = served
        return served

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{owner}/{name}/resolve/{revision}/{file:.+}", self._resolve)
        app.router.add_route("*", "/cdn/{file:.+}", self._cdn)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.base_url

    async def close(self) -> None:
        self._closing = True
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, repo: str, filename: str, revision: str = "main") -> str:
        return f"{self.base_url}/{repo}/resolve/{revision}/{filename}"

    def release_stall(self) -> None:
        self.knobs.stall_after = None

    # what happened -----------------------------------------------------------------------------------

    def cdn_gets(self) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.startswith("/cdn/")]

    def bytes_sent(self) -> int:
        return sum(r.sent for r in self.requests)

    # handlers ----------------------------------------------------------------------------------------

    def _record(self, request: web.Request) -> Request:
        rec = Request(request.method, request.path, dict(request.headers))
        self.requests.append(rec)
        return rec

    def _by_name(self, filename: str) -> ServedFile | None:
        for (_, name), served in self.files.items():
            if name == filename:
                return served
        return None

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        rec = self._record(request)
        repo = f"{request.match_info['owner']}/{request.match_info['name']}"
        filename = request.match_info["file"]
        served = self.files.get((repo, filename))
        if self.knobs.token is not None:
            auth = request.headers.get("Authorization")
            if auth is None:
                return self._error(rec, 401, "GatedRepo",
                                   f"Access to model {repo} is restricted. You must have access to it and be "
                                   f"authenticated to access it. Please log in.")
            if auth != f"Bearer {self.knobs.token}":
                return self._error(rec, 403, "GatedRepo",
                                   f"Access to model {repo} is restricted and you are not in the authorized list.")
        if served is None:
            revision = request.match_info["revision"]
            return self._error(rec, 404, "EntryNotFound", f'{filename} does not exist on "{revision}"')
        host = f"{self.knobs.cdn_host}:{self.port}" if self.knobs.cdn_host else request.host
        headers = {
            "Location": f"http://{host}/cdn/{filename}",
            "X-Linked-Etag": f'"{served.sha256}"',
            "ETag": f'"{served.sha256}"',
            "X-Repo-Commit": COMMIT,
        }
        if self.knobs.send_sizes:
            headers["X-Linked-Size"] = str(served.size)
        rec.status = 302
        return web.Response(status=302, headers=headers)

    def _error(self, rec: Request, status: int, code: str, message: str) -> web.Response:
        rec.status = status
        return web.Response(status=status, headers={"X-Error-Code": code, "X-Error-Message": message},
                            text=message if rec.method != "HEAD" else None)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        rec = self._record(request)
        served = self._by_name(request.match_info["file"])
        if served is None:
            rec.status = 404
            return web.Response(status=404)
        knobs = self.knobs
        if request.method == "GET" and knobs.fail_statuses:
            rec.status = knobs.fail_statuses.pop(0)
            return web.Response(status=rec.status, text="try again later")
        start, status = 0, 200
        header_range = request.headers.get("Range")
        if header_range and not knobs.ignore_range:
            m = _RANGE.match(header_range.strip())
            if m is None or int(m.group(1)) >= served.size:
                rec.status = 416
                return web.Response(status=416, headers={"Content-Range": f"bytes */{served.size}"})
            start, status = int(m.group(1)), 206
        resp = web.StreamResponse(status=status)
        resp.headers["Accept-Ranges"] = "bytes"
        resp.headers["ETag"] = f'"{served.sha256}"'
        resp.headers["Content-Type"] = "application/octet-stream"
        if status == 206:
            resp.headers["Content-Range"] = f"bytes {start}-{served.size - 1}/{served.size}"
        if knobs.send_sizes:
            resp.content_length = served.size - start
        rec.status = status
        if request.method == "HEAD":
            if knobs.send_sizes:
                resp.content_length = served.size
            await resp.prepare(request)
            return resp
        await resp.prepare(request)
        self.active_bodies += 1
        self.max_active_bodies = max(self.max_active_bodies, self.active_bodies)
        try:
            await self._send_body(request, resp, rec, served, start)
        finally:
            self.active_bodies -= 1
        return resp

    async def _send_body(self, request: web.Request, resp: web.StreamResponse, rec: Request,
                         served: ServedFile, start: int) -> None:
        knobs = self.knobs
        cut = None
        if knobs.cut_after is not None and knobs.cut_times > 0:
            knobs.cut_times -= 1
            cut = knobs.cut_after
        offset = start
        block = 1 << 20
        if knobs.rate_bps:
            block = max(1024, knobs.rate_bps // 20)
        while offset < served.size:
            n = min(block, served.size - offset)
            if cut is not None:
                n = min(n, cut - rec.sent)
            stall = knobs.stall_after
            if stall is not None and stall > offset:
                n = min(n, stall - offset)
            elif stall is not None:
                await self._stall(request, offset)
                continue
            if n <= 0:  # the cut point: drop the connection, as a flaky network does
                assert request.transport is not None
                request.transport.close()
                raise asyncio.CancelledError  # aiohttp ends the handler without writing anything more
            data = served.read(offset, n)
            if knobs.corrupt_offset is not None and offset <= knobs.corrupt_offset < offset + n:
                i = knobs.corrupt_offset - offset
                data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
            await resp.write(data)
            rec.sent += n
            offset += n
            if knobs.rate_bps:
                await asyncio.sleep(n / knobs.rate_bps)
        await resp.write_eof()

    async def _stall(self, request: web.Request, offset: int) -> None:
        """Hold the body at ``offset`` until the test releases it; drop the connection when the client
        goes away or the server shuts down."""
        while self.knobs.stall_after is not None and self.knobs.stall_after <= offset:
            if self._closing or request.transport is None or request.transport.is_closing():
                if request.transport is not None:
                    request.transport.close()
                raise asyncio.CancelledError
            await asyncio.sleep(0.02)


@contextlib.contextmanager
def running_hub(files: list[tuple[str, str, Path]]) -> Iterator[FakeHub]:
    """A FakeHub serving ``(repo, file name, local path)`` entries on its own event loop thread, for
    tests that drive it from synchronous code (a node process, the desktop app)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    h = FakeHub()
    for repo, name, path in files:
        h.add(repo, name, path)
    asyncio.run_coroutine_threadsafe(h.start(), loop).result(30)
    try:
        yield h
    finally:
        asyncio.run_coroutine_threadsafe(h.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

"""Running the node's HTTP server: bind first (a taken port fails fast), then load the models while
/health answers 503."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import socket
import urllib.request
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from .api.app import build_app, error_response
from .api.pressure import FD_PRESSURE, is_fd_exhaustion
from .errors import EXIT_UNAVAILABLE, APIError, NodeError
from .node import Node

try:
    import resource
except ImportError:  # Windows: no RLIMIT_NOFILE to read or raise
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# Descriptors kept free for everything besides client connections (model files, the mesh's sockets, a
# hub's nats-server, downloads, logs): past this, new connections are answered 503 at once.
FD_HEADROOM = 64
# Shed connections kept open (for 2 s, so the client reads its 503) at most at once; in a flood past this,
# further ones are closed as soon as their answer is written, so shedding never spends the headroom.
SHED_LINGER_MAX = 16
# The kernel's queue of connections waiting to be accepted.
LISTEN_BACKLOG = 512
# Connections accepted per event-loop turn. asyncio accepts up to its "backlog" in one go, each with its own
# descriptor, before any of them reaches Connection.connection_made (where shedding is decided): a burst of
# 128 would run the process out of descriptors below the budget. A few per turn keep the accepted-but-
# undecided ones well inside FD_HEADROOM; the loop turns often enough that throughput does not suffer.
ACCEPT_PER_TURN = 8
# A request body slower than this on average (after its first read_timeout seconds) is cut off.
MIN_BODY_BYTES_PER_SECOND = 1024
# Idle keep-alive connections are closed after this long (aiohttp's default is an hour).
KEEPALIVE_TIMEOUT = 75.0


class PortInUse(NodeError):
    """The HTTP port is taken (by another node or another program)."""

    default_status = 503
    default_code = "port_in_use"
    exit_code = EXIT_UNAVAILABLE


def _who_holds(host: str, port: int) -> str:
    """'another ClosedMesh node' when the holder answers like one, else 'another program'."""
    h = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    try:
        with urllib.request.urlopen(f"http://{h}:{port}/api/status", timeout=2) as r:
            data = json.loads(r.read())
            if isinstance(data, dict) and "node" in data:
                return f"another ClosedMesh node (id {data['node'].get('id', '?')})"
    except Exception:
        pass
    return "another program"


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            holder = _who_holds(host, port) if e.errno == errno.EADDRINUSE else "the system (permission denied)"
            raise PortInUse(
                f"port {port} on {host} is already in use by {holder}. Stop it, or choose another port: "
                f"closedmesh serve --port {port + 1}"
            ) from None
        raise
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM set ``stop`` (where the loop can take signal handlers: not on Windows, not off the
    main thread)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass


def _raw_response(err: APIError) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, for answers given outside aiohttp's
    request cycle (a shed connection, a read timeout)."""
    body = json.dumps(err.body()).encode()
    reason = {408: "Request Timeout", 503: "Service Unavailable"}.get(err.status, "Error")
    head = (
        f"HTTP/1.1 {err.status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    if err.retry_after is not None:
        head += f"Retry-After: {err.retry_after}\r\n"
    return (head + "\r\n").encode() + body


def parser_error(status: int, exc: BaseException | None, max_field_size: int) -> APIError:
    """aiohttp's own errors (the HTTP parser's, a handler that timed out or crashed past the middleware)
    as OpenAI errors with the right status."""
    if isinstance(exc, LineTooLong):
        return APIError(
            431,
            f"A header line (or the request line) is longer than this node accepts ({max_field_size} bytes).",
            "invalid_request_error",
            None,
            "header_too_large",
        )
    if isinstance(exc, BadHttpMethod):
        return APIError(
            400,
            f"This is not an HTTP request this node understands ({exc.message}). Use "
            f"http:// (not https://) and a standard method.",
            "invalid_request_error",
            None,
            "bad_http_request",
        )
    if isinstance(exc, HttpProcessingError):
        msg = exc.message or "malformed request"
        if "Too many headers" in msg:
            return APIError(
                431,
                f"The request has more headers than this node accepts ({msg}).",
                "invalid_request_error",
                None,
                "too_many_headers",
            )
        if "Missing 'Host'" in msg:
            return APIError(
                400, "An HTTP/1.1 request must carry a Host header.", "invalid_request_error", None, "missing_host"
            )
        code = exc.code if 400 <= (exc.code or 0) < 600 else 400
        return APIError(
            code, f"The HTTP request could not be parsed: {msg}", "invalid_request_error", None, "bad_http_request"
        )
    if status == 504:
        return APIError(504, "The request took too long to handle.", "server_error", None, "timeout")
    if status >= 500:
        return APIError(
            status,
            "The node hit an internal error while handling this request; it has been logged "
            "and the node keeps serving.",
            "server_error",
            None,
            "internal_error",
        )
    return APIError(status, "The HTTP request could not be handled.", "invalid_request_error", None, "bad_http_request")


class Connection(RequestHandler):
    """aiohttp's per-connection protocol with what a node open to strangers needs besides:

    - errors of aiohttp's own (the HTTP parser's) in the OpenAI shape, logged at debug level only;
    - a read deadline: a request's head must arrive within ``read_timeout`` seconds, and its body must
      neither stall that long nor average under MIN_BODY_BYTES_PER_SECOND, so half-open and trickling
      connections cannot pile up;
    - load shedding: past the descriptor budget a new connection is answered 503 and closed at once.
    """

    __slots__ = ("_head_since", "_body_since", "_body_bytes", "_last_data", "_last_payload")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server: GuardedServer = self._manager  # type: ignore[assignment]
        if server.over_capacity():
            self._force_close = True  # data_received ignores whatever the client sends
            server.shed(self, transport)  # type: ignore[arg-type]
            return
        super().connection_made(transport)
        self._head_since: float | None = self._loop.time()
        self._body_since = 0.0
        self._body_bytes = 0
        self._last_data = -1.0  # no byte yet
        self._last_payload: Any = None  # the body stream of the latest request head

    def connection_lost(self, exc: BaseException | None) -> None:
        if isinstance(self._manager, GuardedServer):
            self._manager.shed_open.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._force_close or self._close:
            return
        now = self._loop.time()
        self._last_data = now
        between_requests = (
            self._current_request is None
            and not self._messages
            and (self._last_payload is None or self._last_payload.is_eof())
        )  # not the rest of an unread body
        if self._head_since is None and between_requests:
            self._head_since = now  # the next request begins on a kept-alive connection
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a head was parsed: what follows is its body
            self._last_payload = self._messages[-1][1] if self._messages else None
            self._head_since = None
            self._body_since = now
            self._body_bytes = 0
        else:
            self._body_bytes += len(data)

    def check_deadline(self, now: float, timeout: float) -> None:
        """Called about once a second: close a connection whose client is too slow."""
        if self._force_close or self.transport is None:
            return
        request = self._current_request
        if request is None:
            if self._head_since is not None and not self._request_in_progress and now - self._head_since > timeout:
                # A connection that never said anything is closed silently, as an idle one: a client
                # that opened it ahead of time must not read a 408 as the answer to its next request.
                self._time_out(
                    f"The request head was not received within {timeout:g} seconds.",
                    answer=self._last_data >= self._head_since,
                )
            return
        if request.content.is_eof():
            return
        stalled = now - self._last_data > timeout
        too_slow = now > self._body_since + timeout + self._body_bytes / MIN_BODY_BYTES_PER_SECOND
        if stalled or too_slow:
            self._time_out(
                f"The request body was not received in time: it must not pause for {timeout:g} "
                f"seconds nor arrive slower than {MIN_BODY_BYTES_PER_SECOND} bytes a second.",
                answer=request.writer.output_size == 0,
            )

    def _time_out(self, message: str, answer: bool = True) -> None:
        log.debug("closing a slow connection from %s: %s", self.peername, message)
        if answer and self.transport is not None:
            self.transport.write(
                _raw_response(APIError(408, message, "invalid_request_error", None, "request_timeout"))
            )
        self.force_close()

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500 and not isinstance(exc, ConnectionError):
            log.error(
                "error handling %s %s", getattr(request, "method", "?"), getattr(request, "path", "?"), exc_info=exc
            )
        else:  # the client's fault (or its disconnect): not worth more than a debug line
            log.debug("bad request from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:
            raise ConnectionError("a response is already under way; the connection is closed instead")
        resp = error_response(parser_error(status, exc, self.max_field_size))
        resp.force_close()
        return resp


class GuardedServer(web.Server):
    """aiohttp's low-level server, making :class:`Connection` protocols and watching their deadlines."""

    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout
        self.fds_besides_connections = open_fd_count() or 0  # refreshed every second by check_deadlines
        self.shed_total = 0
        self.shed_open: set[Connection] = set()  # shed connections still open for their answer to be read

    def __call__(self) -> Connection:
        return Connection(self, loop=self._loop, **self._kwargs)

    def connection_budget(self) -> int | None:
        """How many client connections fit in the descriptor limit (read now: it can change under a
        running process)."""
        if resource is None:
            return None
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return None
        return max(8, soft - self.fds_besides_connections - FD_HEADROOM)

    def over_capacity(self) -> bool:
        budget = self.connection_budget()
        if budget is not None and len(self._connections) + 32 >= budget:
            # Near the limit the decision uses a fresh count (the watchdog's is up to a second old, and
            # descriptors come and go with model loads and engine workers).
            in_use = open_fd_count()
            if in_use is not None:
                self._count_besides(in_use)
                budget = self.connection_budget()
        return budget is not None and len(self._connections) >= budget

    def _count_besides(self, in_use: int) -> None:
        # Shed connections are neither client connections nor the node's own: at most SHED_LINGER_MAX of
        # them, inside the headroom.
        self.fds_besides_connections = max(0, in_use - len(self._connections) - len(self.shed_open))

    def shed(self, conn: Connection, transport: asyncio.Transport) -> None:
        """Answer a connection over the budget with 503 and close it: written at once, then the write
        side is shut so the client reads the answer before it sees the end (closing with its request
        unread could reset the connection before the answer is read); closed for good after 2 s. In a
        flood (SHED_LINGER_MAX already lingering) it is closed as soon as the answer is written: lingering
        ones hold descriptors, and running out of them would cost the connections within the budget."""
        self.shed_total += 1
        FD_PRESSURE.record(
            f"{len(self._connections)} connections are open, the most the descriptor limit "
            f"leaves room for; a new one was answered 503"
        )
        transport.write(
            _raw_response(
                APIError(
                    503,
                    "The node has too many open connections right now; retry shortly.",
                    "server_error",
                    None,
                    "overloaded",
                    retry_after=1,
                )
            )
        )
        if len(self.shed_open) >= SHED_LINGER_MAX:
            transport.close()  # after the answer is flushed
            return
        try:
            if transport.can_write_eof():
                transport.write_eof()
        except OSError:  # the client is gone already (reset while it waited to be accepted)
            transport.close()
            return
        self.shed_open.add(conn)
        self._loop.call_later(2.0, self._close_shed, conn, transport)

    def _close_shed(self, conn: Connection, transport: asyncio.Transport) -> None:
        self.shed_open.discard(conn)
        transport.close()

    def close_idle(self) -> int:
        """Close connections that hold a descriptor without a request in progress (idle keep-alive,
        half-open); clients reopen them when they need them. Returns how many were closed."""
        idle = [
            c
            for c in self._connections
            if isinstance(c, Connection) and c._current_request is None and not c._request_in_progress
        ]
        for c in idle:
            c.force_close()
        return len(idle)

    def check_deadlines(self) -> None:
        now = self._loop.time()
        in_use = open_fd_count()
        if in_use is not None:  # None: no descriptor left even to count them; keep the last count
            self._count_besides(in_use)
        for c in list(self._connections):
            if isinstance(c, Connection):
                c.check_deadline(now, self.read_timeout)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server is a :class:`GuardedServer` (built from the one aiohttp makes, so the
    application's own settings are kept)."""

    def __init__(self, app: web.Application, *, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.read_timeout = read_timeout

    async def _make_server(self) -> GuardedServer:
        base = await super()._make_server()
        return GuardedServer(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=asyncio.get_running_loop(),
            read_timeout=self.read_timeout,
            **base._kwargs,
        )  # aiohttp is pinned: its handler settings (debug, access log)


def open_fd_count() -> int | None:
    """Descriptors this process holds now; None where the platform does not say (or listing them
    needs a descriptor there is none left for)."""
    for d in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(d))
        except OSError:
            continue
    return None


def raise_fd_limit(target: int = 8192) -> None:
    """Raise the soft descriptor limit towards the hard one (as Go programs do by default): macOS
    starts processes at 256, which a busy node outgrows."""
    if resource is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


def _loop_exception_handler(server_ref: list) -> Any:
    """The loop's handler: descriptor exhaustion (asyncio reports a failed accept once per queued
    connection, with a traceback each) becomes one warning per interval and closes idle connections to
    make room; anything else goes to asyncio's default handler."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if is_fd_exhaustion(context.get("exception")):
            closed = server_ref[0].close_idle() if server_ref else 0
            FD_PRESSURE.record(f"{context.get('message', 'an operation failed')}; closed {closed} idle connections")
            return
        loop.default_exception_handler(context)

    return handle


async def _watch_deadlines(server: GuardedServer) -> None:
    interval = min(1.0, server.read_timeout / 4)
    while True:
        await asyncio.sleep(interval)
        try:
            server.check_deadlines()
        except Exception:  # never let the watchdog die silently: slow clients would pile up again
            log.exception("checking connection deadlines failed")


async def serve(node: Node, sock: socket.socket, stop: asyncio.Event | None = None) -> None:
    raise_fd_limit()
    app = build_app(node)
    # handler_cancellation: a client that disconnects cancels its handler, which cancels its generation.
    runner = GuardedRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        shutdown_timeout=5,
        read_timeout=node.settings.read_timeout,
    )
    await runner.setup()
    server: GuardedServer = runner.server  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(_loop_exception_handler([server]))
    watchdog = asyncio.create_task(_watch_deadlines(server))
    site = web.SockSite(runner, sock, backlog=ACCEPT_PER_TURN)
    await site.start()
    sock.listen(LISTEN_BACKLOG)  # asyncio re-listened with ACCEPT_PER_TURN; the kernel's queue stays long
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    host, port = sock.getsockname()[:2]
    log.info("ClosedMesh node %s listening on http://%s:%d/v1 (loading models…)", node.id, host, port)
    node.start_loading()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        watchdog.cancel()
        # Engines first: every running stream gets an explicit "node is shutting down" error event
        # (never a silently cut stream), then the HTTP side closes.
        await node.close()
        await runner.cleanup()
        loop.set_exception_handler(previous_handler)

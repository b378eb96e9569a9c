"""Running the node's HTTP server: bind first (a taken port fails fast), then load the models while
/health answers 503."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import signal
import socket
import urllib.request

from aiohttp import web

from .api.app import build_app
from .node import Node

log = logging.getLogger(__name__)


class PortInUse(RuntimeError):
    pass


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
    sock.listen(512)
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


async def serve(node: Node, sock: socket.socket, stop: asyncio.Event | None = None) -> None:
    app = build_app(node)
    # handler_cancellation: a client that disconnects cancels its handler, which cancels its generation.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock, shutdown_timeout=5)
    await site.start()
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    host, port = sock.getsockname()[:2]
    log.info("ClosedMesh node %s listening on http://%s:%d/v1 (loading models…)", node.id, host, port)
    node.start_loading()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        # Engines first: every running stream gets an explicit "node is shutting down" error event
        # (never a silently cut stream), then the HTTP side closes.
        await node.close()
        await runner.cleanup()

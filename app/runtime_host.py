"""The node inside the app: the runtime's own server, on a background thread with its own asyncio loop.

The Qt thread never runs the runtime's loop, and nothing here reaches into the runtime's internals:
it uses the same public pieces as ``closedmesh serve`` (``Node``, ``bind_socket``, ``serve``) and the
app talks to the node over HTTP like any other client. No Qt here.

    host = RuntimeHost(settings, paths)
    host.start()      # binds the port first: PortInUse / ModelSpecError are raised here, synchronously
    ...
    host.stop()       # stops generation (streams get an explicit error), closes the node, joins the thread
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import replace

from runtime.config import Paths, ServeSettings
from runtime.node import Node
from runtime.server import PortInUse, bind_socket, serve

log = logging.getLogger(__name__)

__all__ = ["RuntimeHost", "PortInUse", "next_free_port"]


def next_free_port(host: str, after: int, tries: int = 50) -> int:
    """The first port above ``after`` that can be bound on ``host`` now (0 when none of ``tries`` can)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in range(after + 1, min(after + 1 + tries, 65536)):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    return 0


class RuntimeHost:
    """One run of the node on a background thread. Not restartable: make a new one for another port."""

    def __init__(
        self, settings: ServeSettings, paths: Paths, on_exit: Callable[[BaseException | None], None] | None = None
    ) -> None:
        self.settings = replace(settings)  # our copy: the port is rewritten once bound
        self.paths = paths
        self.on_exit = on_exit  # called on the runtime thread when serve() returns (None) or fails
        self.node: Node | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._loop_ready = threading.Event()

    @property
    def port(self) -> int:
        return self.settings.port

    @property
    def base_url(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    @property
    def admin_token(self) -> str:
        assert self.node is not None, "start() first"
        return self.node.admin_token

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Bind the port, then serve on the runtime thread while the models load. Raises PortInUse when
        the port is taken, ModelSpecError for a model that cannot be served."""
        if self._thread is not None:
            raise RuntimeError("a RuntimeHost runs once; make a new one")
        sock = bind_socket(self.settings.host, self.settings.port)
        try:
            self.settings.port = sock.getsockname()[1]  # port 0 picks a free one
            self.node = Node(self.settings, self.paths)
        except BaseException:
            sock.close()
            raise
        self._thread = threading.Thread(target=self._run, args=(sock,), name="closedmesh-runtime", daemon=False)
        self._thread.start()
        self._loop_ready.wait()

    def _run(self, sock: socket.socket) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._loop_ready.set()
            assert self.node is not None
            await serve(self.node, sock, self._stop)

        try:
            asyncio.run(main())
        except BaseException as e:  # the node stopped by itself: the UI must say so
            log.exception("the node stopped with an error")
            self.error = e
        finally:
            self._loop_ready.set()
            sock.close()
            if self.on_exit is not None:
                self.on_exit(self.error)

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the node (running streams end with an explicit error, models close) and join the thread.
        True when the thread ended within ``timeout``."""
        thread = self._thread
        if thread is None:
            return True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop closed between the check and the call: it is stopping anyway
                pass
        thread.join(timeout)
        if thread.is_alive():
            log.error("the node did not stop within %.0f s", timeout)
            return False
        return True

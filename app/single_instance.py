"""One app per user (and per ClosedMesh home): a second launch asks the first to show its window, then exits.

A lock file in the config folder decides who is first (QLockFile: a lock left by a crashed app is
taken over, since its process is gone); the first listens on a local socket (a Unix socket in the temp
folder, a named pipe on Windows, readable by this user only) for "show".
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from PySide6.QtCore import QLockFile, QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger(__name__)

SHOW = b"show\n"


def server_name(config_dir: Path) -> str:
    """A short name unique to this config folder (so test homes and users never collide)."""
    digest = hashlib.sha256(str(config_dir.resolve()).encode()).hexdigest()[:16]
    return f"closedmesh-app-{digest}"


class SingleInstance(QObject):
    activated = Signal()  # a second launch asked us to show ourselves

    def __init__(self, config_dir: Path) -> None:
        super().__init__()
        config_dir.mkdir(parents=True, exist_ok=True)
        self.name = server_name(config_dir)
        self._lock = QLockFile(str(config_dir / "app.lock"))
        self._lock.setStaleLockTime(0)  # stale only when its process is gone, never by age
        self._server: QLocalServer | None = None

    def acquire(self) -> bool:
        """True: we are the first; we now listen for later launches. False: another app runs."""
        if not self._lock.tryLock(0):
            return False
        QLocalServer.removeServer(self.name)  # a socket file left by a crashed app
        server = QLocalServer()  # deleted in release(), on this thread
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(self.name):
            log.warning(
                "cannot listen for later launches (%s); they will not bring this window forward", server.errorString()
            )
        server.newConnection.connect(self._on_connection)
        self._server = server
        return True

    def _on_connection(self) -> None:
        assert self._server is not None
        while (sock := self._server.nextPendingConnection()) is not None:
            # the socket is the server's child: it goes with the server (no deleteLater of its own,
            # which could run after the server already took it down)
            sock.readyRead.connect(lambda s=sock: self._read(s))
            if sock.bytesAvailable():
                self._read(sock)

    def _read(self, sock: QLocalSocket) -> None:
        if bytes(sock.readAll().data()).startswith(SHOW.strip()):
            sock.disconnectFromServer()
            self.activated.emit()

    def notify_first(self, timeout: float = 10.0) -> bool:
        """Ask the running app to show its window. It may still be starting (lock taken, not yet
        listening): retry until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            sock = QLocalSocket()
            sock.connectToServer(self.name)
            if sock.waitForConnected(1000):
                sock.write(SHOW)
                sock.flush()
                ok = sock.waitForBytesWritten(2000) or sock.bytesToWrite() == 0
                sock.disconnectFromServer()
                return ok
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)

    def release(self) -> None:
        """Stop listening and unlock. Qt objects are deleted on this (the Qt) thread, never left to the
        garbage collector, which may run on any thread."""
        if self._server is not None:
            self._server.close()
            self._server.deleteLater()
            self._server = None
        self._lock.unlock()

"""The one place the Qt side keeps the node's state: a :class:`~app.state.NodeState`, advanced by the
pure functions of app/state.py from the node's events and polls, with a ``changed`` signal."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from .client import ApiResult, NodeClient
from .state import NodeState, apply_event, apply_mesh, apply_status

STATUS_POLL_MS = 2000  # requests in flight, memory and tok/s change without events


class NodeStore(QObject):
    changed = Signal(object)  # the new NodeState
    node_event = Signal(str, object)  # every event, after it was applied (pages that care about one kind)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state = NodeState()
        self.client: NodeClient | None = None
        self._poll = QTimer(self)
        self._poll.setInterval(STATUS_POLL_MS)
        self._poll.timeout.connect(self.refresh)

    def attach(self, client: NodeClient) -> None:
        """Follow this client's events (a new one after the node restarted elsewhere)."""
        self.client = client
        client.node_event.connect(self.feed)
        client.connected.connect(self.set_connected)
        self._poll.start()

    def detach(self) -> None:
        self._poll.stop()
        self.client = None

    def _set(self, state: NodeState) -> None:
        if state != self.state:
            self.state = state
            self.changed.emit(state)

    def feed(self, name: str, data: Any) -> None:
        """One event of ``GET /api/events`` (from the client, or recorded ones in a test)."""
        self._set(apply_event(self.state, name, data))
        self.node_event.emit(name, data)

    def set_connected(self, up: bool) -> None:
        if up != self.state.connected:
            self._set(replace(self.state, connected=up))

    def set_start_error(self, message: str | None) -> None:
        self._set(replace(self.state, start_error=message))

    def apply_mesh(self, mesh: dict) -> None:
        self._set(apply_mesh(self.state, mesh))

    def refresh(self) -> None:
        """Ask for a fresh /api/status (never waits)."""
        if self.client is None or not self.state.connected:
            return
        self.client.request("GET", "/api/status", timeout=10, on_done=self._on_status)

    def _on_status(self, r: ApiResult) -> None:
        if r.ok and isinstance(r.data, dict) and self.client is not None:
            self._set(apply_status(self.state, r.data))

"""Peers: the live table of the mesh's other nodes (from the node's ``peers`` events and status)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QLabel, QTableWidgetItem, QVBoxLayout, QWidget

from ..state import NodeState, backend_words, format_ms, format_tps, live_peer_count, mesh_state
from ..store import NodeStore
from ..widgets import muted, table

HEADERS = ["Name", "Models", "Tokens/s", "Free slots", "Latency", "State"]


def peer_cells(p: dict[str, Any]) -> list[str]:
    """One peer as the table's cells (pure)."""
    models = [m.get("id", "?") for m in p.get("models") or [] if isinstance(m, dict)]
    shown = ", ".join(models[:4]) + (f" +{len(models) - 4} more" if len(models) > 4 else "")
    name = p.get("name") or str(p.get("id", "?"))[:12]
    backend = p.get("backend")
    return [
        f"{name} ({backend_words(backend)})" if backend else name,
        shown or "—",
        format_tps(p.get("tokens_per_second")),
        "—" if p.get("free_slots") is None else str(p.get("free_slots")),
        format_ms(p.get("latency_ms")),
        {"live": "Live", "stale": "Not heard from lately"}.get(p.get("state", ""), str(p.get("state", "—"))),
    ]


def peers_summary(state: NodeState) -> str:
    if state.mesh_supported is False:
        return "This version of the node has no mesh support yet, so there are no peers to show."
    ms = mesh_state(state)
    if ms == "off":
        return "You are not in the mesh. Turn on “Join the mesh” to see the other computers and their models."
    if ms in ("connecting", "reconnecting"):
        return "Connecting to the mesh…"
    if ms == "error":
        return f"The mesh connection failed: {(state.mesh or {}).get('error') or 'unknown error'}"
    n, total = live_peer_count(state), len(state.peers)
    where = (state.mesh or {}).get("url")
    text = f"{n} live peer{'s' if n != 1 else ''}" + (f" ({total - n} not heard from lately)" if total > n else "")
    return text + (f" · mesh {where}" if where else "")


class PeersPage(QWidget):
    def __init__(self, store: NodeStore) -> None:
        super().__init__()
        root = QVBoxLayout(self)
        root.setContentsMargins(16, 16, 16, 16)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        root.addWidget(self.summary)
        root.addWidget(
            muted(
                "Peers are other people's computers in the mesh. Requests for a model this computer "
                "does not run go to the fastest live peer that runs it."
            )
        )
        self.table = table(HEADERS, stretch=1)
        root.addWidget(self.table, 1)
        self.empty = QLabel()
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setStyleSheet("color:#5f6368; font-size:14px; padding:40px;")
        root.addWidget(self.empty, 1)
        store.changed.connect(self.show_state)
        self.show_state(store.state)

    def show_state(self, state: NodeState) -> None:
        summary = peers_summary(state)
        self.summary.setText(summary)
        self.summary.setVisible(bool(state.peers))
        self.table.setVisible(bool(state.peers))
        self.empty.setVisible(not state.peers)
        if not state.peers:
            self.empty.setText(summary)
        peers = sorted(state.peers, key=lambda p: (p.get("state") != "live", -(p.get("tokens_per_second") or 0)))
        self.table.setRowCount(len(peers))
        grey = QColor("#80868b")
        for i, p in enumerate(peers):
            for j, text in enumerate(peer_cells(p)):
                item = QTableWidgetItem(text)
                if p.get("state") == "stale":
                    item.setForeground(grey)
                if j == 1:
                    item.setToolTip(
                        "\n".join(
                            f"{m.get('id')}: {m.get('free_slots', '?')} free slots, "
                            f"{format_tps(m.get('tokens_per_second_p50'))}"
                            for m in p.get("models") or []
                            if isinstance(m, dict)
                        )
                    )
                self.table.setItem(i, j, item)

"""Overview: what the node is doing — state, hardware, memory, requests, and each served model's speed."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import icons
from ..links import Links
from ..mesh import MeshToggle
from ..state import (
    MESH_STATE_WORDS,
    MODEL_STATE_WORDS,
    NodeState,
    backend_name,
    format_bytes,
    format_duration,
    format_ms,
    format_tps,
    live_peer_count,
    mesh_state,
    node_errors,
    node_ready,
    status_line,
    tray_kind,
)
from ..store import NodeStore
from ..widgets import heading, muted, table


def _node_state_words(state: NodeState) -> str:
    errors = node_errors(state)
    if errors:
        return "Error — " + errors[0]
    if not state.connected:
        return "Starting…" if state.status is None else "Not answering (restarting?)"
    return "Ready" if node_ready(state) else "Starting — loading models…"


def _memory_words(cap: dict) -> str:
    if not cap:
        return "—"
    ram = f"{format_bytes(cap.get('ram_free_bytes'))} free of {format_bytes(cap.get('ram_total_bytes'))} RAM"
    if cap.get("vram_total_bytes"):
        ram += (
            f" · {format_bytes(cap.get('vram_free_bytes'))} free of {format_bytes(cap.get('vram_total_bytes'))}"
            f" GPU memory"
        )
    return ram


def _devices_words(cap: dict) -> str:
    devices = cap.get("devices") or []
    if not devices:
        return "No GPU used" if cap else "—"
    return ", ".join(f"{d.get('name')} ({format_bytes(d.get('free_bytes'))} free)" for d in devices)


def _mesh_words(state: NodeState) -> str:
    if state.mesh_supported is False:
        return "Not available in this version of the node"
    ms = mesh_state(state)
    words = MESH_STATE_WORDS.get(ms, ms)
    mesh = state.mesh or {}
    if ms == "joined":
        n = live_peer_count(state)
        words += f" · {n} live peer{'' if n == 1 else 's'}"
        if mesh.get("url"):
            words += f" · {mesh['url']}"
    if ms in ("off", "error") and (mesh.get("error") or ms == "error"):
        words = f"Not joined — {mesh.get('error') or 'the last attempt failed'}"
    if ms == "reconnecting" and mesh.get("error"):
        words += f" — {mesh['error']}"
    return words


class OverviewPage(QWidget):
    join_requested = Signal(bool)  # the Join/Leave button: join (True) or leave
    open_chat_requested = Signal()

    def __init__(self, store: NodeStore, toggle: MeshToggle, links: Links) -> None:
        super().__init__()
        self.toggle = toggle
        self.links = links
        root = QVBoxLayout(self)
        root.setContentsMargins(16, 16, 16, 16)
        root.setSpacing(12)

        top = QHBoxLayout()
        self.icon = QLabel()
        self.icon.setFixedSize(48, 48)
        head = QVBoxLayout()
        self.headline = heading("Starting…", 14)
        self.api = muted(wrap=False)
        self.api.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        head.addWidget(self.headline)
        head.addWidget(self.api)
        self.join = QPushButton("Join the mesh")
        self.join.setMinimumWidth(170)
        self.join.clicked.connect(lambda: self.join_requested.emit(not toggle.view().checked))
        self.chat = QPushButton("Open Chat")
        self.chat.clicked.connect(self.open_chat_requested.emit)
        top.addWidget(self.icon)
        top.addSpacing(8)
        top.addLayout(head, 1)
        top.addWidget(self.join)
        top.addWidget(self.chat)
        root.addLayout(top)

        box = QGroupBox("This node")
        form = QFormLayout(box)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        form.setHorizontalSpacing(16)
        self.fields: dict[str, QLabel] = {}
        for key, label in (
            ("state", "State"),
            ("backend", "Backend"),
            ("devices", "GPU"),
            ("memory", "Memory"),
            ("requests", "Requests"),
            ("mesh", "Mesh"),
            ("node", "Node"),
        ):
            v = QLabel("—")
            v.setWordWrap(True)
            v.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.fields[key] = v
            form.addRow(label + ":", v)
        root.addWidget(box)

        root.addWidget(heading("Models served here", 11))
        self.models = table(["Model", "State", "Context", "Slots busy", "Tokens/s (median)", "First token (median)"])
        root.addWidget(self.models)
        root.addStretch(1)

        store.changed.connect(self.show_state)
        toggle.changed.connect(self._render_toggle)
        self.show_state(store.state)

    def _render_toggle(self) -> None:
        v = self.toggle.view()
        self.join.setEnabled(v.enabled)
        # a button says what a click does (the tray's check mark says the state)
        self.join.setText("Leave the mesh" if v.checked and v.enabled else v.text)

    def show_state(self, state: NodeState) -> None:
        self.icon.setPixmap(icons.pixmap(tray_kind(state), 48))
        self.headline.setText(status_line(state))
        api = self.links.api_url()
        self.api.setText(f"OpenAI API: {api}" if api else "The node is not running")
        st = state.status or {}
        cap = st.get("capability") or {}
        node = st.get("node") or {}
        req = st.get("requests") or {}
        f = self.fields
        f["state"].setText(_node_state_words(state))
        b = backend_name(state)
        f["backend"].setText(f"{b} · {cap.get('threads')} threads · {cap.get('physical_cores')} cores" if b else "—")
        f["devices"].setText(_devices_words(cap))
        f["memory"].setText(_memory_words(cap))
        f["requests"].setText(f"{req.get('in_flight', 0)} in flight · {req.get('queued', 0)} waiting" if st else "—")
        f["mesh"].setText(_mesh_words(state))
        f["node"].setText(
            f"{node.get('id', '—')} · version {node.get('version', '—')} · up "
            f"{format_duration(node.get('uptime_seconds'))}"
            if node
            else "—"
        )
        self._render_toggle()

        tp = st.get("throughput") or {}
        served = [
            m
            for m in st.get("models", [])
            if m.get("state") in ("ready", "loading", "unloading", "error") or m.get("pinned")
        ]
        t = self.models
        t.setRowCount(len(served))
        for i, m in enumerate(served):
            stats = tp.get(m.get("id"), {})
            slots = m.get("slots")
            cells = [
                m.get("id", ""),
                MODEL_STATE_WORDS.get(m.get("state", ""), m.get("state", "")),
                f"{m['context_length']:,} tokens" if m.get("context_length") else "—",
                f"{m.get('slots_busy', 0)} of {slots}" if slots else "—",
                format_tps(stats.get("tokens_per_second_p50")),
                format_ms(stats.get("ttft_ms_p50")),
            ]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j == 1 and m.get("error"):
                    item.setToolTip(m["error"])
                t.setItem(i, j, item)
        rows_height = sum(t.rowHeight(i) for i in range(t.rowCount())) or t.verticalHeader().defaultSectionSize()
        t.setFixedHeight(t.horizontalHeader().height() + rows_height + 2 * t.frameWidth() + 2)

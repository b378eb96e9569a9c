"""Models: the catalog with how each model fits this machine, downloads with progress, load/unload/delete.

The listing comes from ``GET /api/models`` (admin), fetched again when a model's state changes;
download progress comes from the ``download_progress`` events and only updates the progress cells.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..actions import ModelAction, NodeActions
from ..client import ApiResult
from ..model_rows import ACTION_WORDS, ModelRow, model_rows
from ..state import NodeState
from ..store import NodeStore
from ..widgets import Banner, muted, table

HEADERS = ["Model", "Size", "On this computer", "Status", ""]
FIT_COLORS = {"gpu": "#0d652d", "partial": "#b06000", "cpu": "#174ea6", "too_large": "#a50e0e"}


class StatusCell(QWidget):
    """A state in words, or a progress bar with size, rate and time left while downloading."""

    def __init__(self) -> None:
        super().__init__()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 2, 4, 2)
        lay.setSpacing(1)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(True)
        self.bar.setFixedHeight(16)
        self.text = QLabel()
        self.text.setStyleSheet("color:#3c4043;")
        lay.addWidget(self.bar)
        lay.addWidget(self.text)

    def show_row(self, row: ModelRow) -> None:
        if row.state == "downloading":
            self.bar.show()
            if row.progress is None:
                self.bar.setRange(0, 0)  # busy indicator: size not known yet
            else:
                self.bar.setRange(0, 1000)
                self.bar.setValue(int(row.progress * 1000))
                self.bar.setFormat(f"{row.progress * 100:.0f}%")
            self.text.setText(row.progress_text)
        else:
            self.bar.hide()
            self.text.setText(row.state_text if not row.error else f"Error: {row.error}")
            self.text.setToolTip(row.error or "")
            self.text.setStyleSheet("color:#a50e0e;" if row.error else "color:#3c4043;")


class ModelsPage(QWidget):
    rows_changed = Signal(object)  # list[ModelRow], after every render (the welcome page follows it)

    def __init__(self, store: NodeStore, actions: NodeActions) -> None:
        super().__init__()
        self.store = store
        self.node_actions = actions
        self.listing: dict[str, Any] | None = None
        self.rows: list[ModelRow] = []
        self._shape: list[tuple[str, str, tuple[str, ...]]] = []
        self._status_cells: dict[str, StatusCell] = {}
        self.buttons: dict[tuple[str, str], QPushButton] = {}  # (model id, action) → button (tests use it)

        root = QVBoxLayout(self)
        root.setContentsMargins(16, 16, 16, 16)
        root.setSpacing(8)
        root.addWidget(
            muted(
                "Models from the catalog, with how each would run on this computer. ★ marks the best "
                "fit. Downloads resume if they are interrupted and are checked before use."
            )
        )
        other = QHBoxLayout()
        self.ref = QLineEdit()
        self.ref.setPlaceholderText("Another model: Hugging Face owner/repo/file.gguf, or a link to a .gguf file")
        self.ref.returnPressed.connect(self._pull_typed)
        self.pull_typed = QPushButton("Download")
        self.pull_typed.clicked.connect(self._pull_typed)
        other.addWidget(self.ref, 1)
        other.addWidget(self.pull_typed)
        root.addLayout(other)
        self.banner = Banner()
        root.addWidget(self.banner)
        self.empty = muted("Loading the model list…")
        root.addWidget(self.empty)
        self.table = table(HEADERS, stretch=0)
        self.table.verticalHeader().setDefaultSectionSize(48)
        h = self.table.horizontalHeader()
        h.setSectionResizeMode(2, QHeaderView.ResizeMode.Interactive)
        h.setSectionResizeMode(3, QHeaderView.ResizeMode.Fixed)
        self.table.setColumnWidth(2, 230)
        self.table.setColumnWidth(3, 250)
        root.addWidget(self.table, 1)

        self._refetch = QTimer(self)
        self._refetch.setSingleShot(True)
        self._refetch.setInterval(250)  # several state changes in a row: one fetch
        self._refetch.timeout.connect(self.fetch)
        store.changed.connect(self.render_state)
        store.node_event.connect(self._on_event)
        store.changed.connect(self._first_fetch)

    # -- data ---------------------------------------------------------------------------------------------

    def _first_fetch(self, state: NodeState) -> None:
        if self.listing is None and state.connected and not self._refetch.isActive():
            self._refetch.start()

    def _on_event(self, name: str, data: Any) -> None:
        if name in ("model_state", "node_ready"):
            self._refetch.start()

    def fetch(self) -> None:
        self.node_actions.list_models(on_done=self._fetched)

    def _fetched(self, r: ApiResult) -> None:
        if r.ok and isinstance(r.data, dict):
            self.listing = r.data
            self.empty.hide()
            self.render_state(self.store.state)
        elif self.listing is None:
            self.empty.setText(f"Could not get the model list: {r.error}")

    # -- actions ------------------------------------------------------------------------------------------

    def act(self, action: ModelAction, model_id: str) -> None:
        """Run a row's action through the node's control API; failures show in the banner."""
        self.banner.clear()
        self.node_actions.model(action, model_id, on_done=self._acted)

    def _acted(self, r: ApiResult) -> None:
        if not r.ok:
            self.banner.show_message(r.error or "the node refused")
        self._refetch.start()

    def _pull_typed(self) -> None:
        ref = self.ref.text().strip()
        if not ref:
            self.banner.show_message(
                "Type a Hugging Face owner/repo/file.gguf or paste a link to a .gguf file first.", "info"
            )
            return
        self.banner.clear()

        def done(r: ApiResult) -> None:
            if r.ok:
                self.ref.clear()
            self._acted(r)

        self.node_actions.model("download", ref, on_done=done)

    # -- rendering ----------------------------------------------------------------------------------------

    def render_state(self, state: NodeState) -> None:
        rows = model_rows(self.listing, state)
        shape = [(r.id, r.state, r.actions) for r in rows]
        if shape != self._shape:
            self._rebuild(rows)
            self._shape = shape
        else:
            for r in rows:  # same rows, same buttons: only progress moved
                cell = self._status_cells.get(r.id)
                if cell is not None:
                    cell.show_row(r)
        self.rows = rows
        self.rows_changed.emit(rows)

    def _rebuild(self, rows: list[ModelRow]) -> None:
        t = self.table
        t.setRowCount(len(rows))
        self._status_cells.clear()
        self.buttons.clear()
        for i, r in enumerate(rows):
            title = QLabel(
                f"<b>{'★ ' if r.recommended else ''}{r.title}</b>"
                + (" <span style='color:#1e8e3e'>(recommended)</span>" if r.recommended else "")
                + f"<br><span style='color:#5f6368'>{r.detail}</span>"
            )
            title.setContentsMargins(6, 0, 6, 0)
            t.setCellWidget(i, 0, title)
            size = QTableWidgetItem(r.size)
            size.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            t.setItem(i, 1, size)
            fit = QLabel(r.fit or "—")
            fit.setWordWrap(True)
            fit.setContentsMargins(6, 0, 6, 0)
            fit.setStyleSheet(f"color:{FIT_COLORS.get(r.fit_kind or '', '#3c4043')};")
            fit.setMinimumWidth(180)
            t.setCellWidget(i, 2, fit)
            cell = StatusCell()
            cell.show_row(r)
            self._status_cells[r.id] = cell
            t.setCellWidget(i, 3, cell)
            box = QWidget()
            lay = QHBoxLayout(box)
            lay.setContentsMargins(4, 2, 4, 2)
            lay.setSpacing(4)
            for action in r.actions:
                b = QPushButton(ACTION_WORDS[action])
                b.clicked.connect(lambda _=False, a=action, mid=r.id: self.act(a, mid))
                if action == "download" and r.fit_kind == "too_large":
                    b.setToolTip("This model needs more memory than this computer has; it would not run here.")
                self.buttons[(r.id, action)] = b
                lay.addWidget(b)
            lay.addStretch(1)
            t.setCellWidget(i, 4, box)

    def button(self, model_id: str, action: str) -> QPushButton | None:
        return self.buttons.get((model_id, action))

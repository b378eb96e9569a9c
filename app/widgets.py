"""Small widgets shared by the window's pages."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QHeaderView, QLabel, QPushButton, QSizePolicy, QTableWidget, QWidget

BANNER_COLORS = {  # background, text, border
    "error": ("#fce8e6", "#a50e0e", "#f5c2bd"),
    "info": ("#e8f0fe", "#174ea6", "#c6dafc"),
    "ok": ("#e6f4ea", "#0d652d", "#b7e1c1"),
}


class Banner(QFrame):
    """A message strip (error / info / ok) with a close button; hidden until it has something to say."""

    closed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(10, 6, 6, 6)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        close = QPushButton("✕")
        close.setFlat(True)
        close.setFixedWidth(28)
        close.setToolTip("Dismiss")
        close.clicked.connect(self.clear)
        lay.addWidget(self.label)
        lay.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.kind = "info"
        self.hide()

    def show_message(self, text: str, kind: str = "error") -> None:
        self.kind = kind
        bg, fg, border = BANNER_COLORS[kind]
        self.setStyleSheet(
            f"#banner {{background:{bg}; border:1px solid {border}; border-radius:4px;}}"
            f"#banner QLabel {{color:{fg}; background:transparent; border:none;}}"
        )
        self.label.setText(text)
        self.show()

    def clear(self) -> None:
        self.label.clear()
        self.hide()
        self.closed.emit()

    def text(self) -> str:
        return "" if self.isHidden() else self.label.text()


def heading(text: str, size: int = 13) -> QLabel:
    lbl = QLabel(text)
    f = lbl.font()
    f.setPointSize(size)
    f.setBold(True)
    lbl.setFont(f)
    return lbl


def muted(text: str = "", wrap: bool = True) -> QLabel:
    lbl = QLabel(text)
    lbl.setWordWrap(wrap)
    lbl.setStyleSheet("color:#5f6368;")
    return lbl


def table(headers: list[str], stretch: int = 0) -> QTableWidget:
    t = QTableWidget(0, len(headers))
    t.setHorizontalHeaderLabels(headers)
    t.verticalHeader().setVisible(False)
    t.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    t.setSelectionMode(QTableWidget.SelectionMode.NoSelection)
    t.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    t.setAlternatingRowColors(True)
    t.setShowGrid(False)
    h = t.horizontalHeader()
    h.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
    for i in range(len(headers)):
        h.setSectionResizeMode(
            i, QHeaderView.ResizeMode.Stretch if i == stretch else QHeaderView.ResizeMode.ResizeToContents
        )
    return t

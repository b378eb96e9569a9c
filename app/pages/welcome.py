"""The first-run welcome: what ClosedMesh does, what joining the mesh means, and the best model for this
computer with a Download button."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..actions import NodeActions
from ..client import ApiResult
from ..links import Links
from ..model_rows import ModelRow, recommended_row
from ..state import NodeState
from ..store import NodeStore
from ..widgets import Banner, heading, muted

INTRO = (
    "ClosedMesh runs AI models on this computer. Apps on this computer can use them through the address "
    "below — anything that works with OpenAI's API does — and you can chat with them in your browser."
)
JOINING = (
    "Joining the mesh is optional. When you join, your computer answers requests from other people in the "
    "mesh while it has capacity to spare, and you can use the models their computers run. "
    "<b>The computer that answers a request reads its prompt:</b> peers read the prompts they serve, and "
    "your computer reads the ones it serves. Don't send anything over the mesh that you would not show a "
    "stranger. You can leave at any time from the tray menu."
)


class WelcomePage(QWidget):
    done = Signal()  # "Got it"
    open_chat_requested = Signal()

    def __init__(self, store: NodeStore, actions: NodeActions, links: Links) -> None:
        super().__init__()
        self.store = store
        self.node_actions = actions
        self.links = links
        self.recommended: ModelRow | None = None
        root = QVBoxLayout(self)
        root.setContentsMargins(28, 24, 28, 24)
        root.setSpacing(10)
        root.addWidget(heading("Welcome to ClosedMesh", 17))
        intro = QLabel(INTRO)
        intro.setWordWrap(True)
        root.addWidget(intro)
        self.api = QLabel()
        self.api.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.api.setStyleSheet("font-family:monospace; padding:4px 8px; background:#f1f3f4; border-radius:4px;")
        root.addWidget(self.api, 0, Qt.AlignmentFlag.AlignLeft)

        root.addSpacing(6)
        root.addWidget(heading("Joining the mesh", 12))
        joining = QLabel(JOINING)
        joining.setWordWrap(True)
        joining.setTextFormat(Qt.TextFormat.RichText)
        root.addWidget(joining)

        root.addSpacing(6)
        root.addWidget(heading("The best model for this computer", 12))
        card = QFrame()
        card.setObjectName("card")
        card.setStyleSheet("#card {border:1px solid #dadce0; border-radius:6px; background:#ffffff;}")
        cl = QHBoxLayout(card)
        cl.setContentsMargins(12, 10, 12, 10)
        info = QVBoxLayout()
        self.model_name = QLabel("Looking at this computer…")
        f = self.model_name.font()
        f.setBold(True)
        self.model_name.setFont(f)
        self.model_info = muted()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFixedHeight(16)
        self.progress.hide()
        self.progress_text = muted()
        self.progress_text.hide()
        info.addWidget(self.model_name)
        info.addWidget(self.model_info)
        info.addWidget(self.progress)
        info.addWidget(self.progress_text)
        self.download = QPushButton("Download")
        self.download.setEnabled(False)
        self.download.clicked.connect(self._download)
        cl.addLayout(info, 1)
        cl.addWidget(self.download, 0, Qt.AlignmentFlag.AlignVCenter)
        root.addWidget(card)
        root.addWidget(
            muted(
                "Bigger models give better answers but need more memory. The Models tab lists them "
                "all, with how each would run here."
            )
        )
        self.banner = Banner()
        root.addWidget(self.banner)
        root.addStretch(1)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        chat = QPushButton("Open Chat")
        chat.clicked.connect(self.open_chat_requested.emit)
        self.got_it = QPushButton("Got it")
        self.got_it.setDefault(True)
        self.got_it.clicked.connect(self.done.emit)
        buttons.addWidget(chat)
        buttons.addWidget(self.got_it)
        root.addLayout(buttons)

        store.changed.connect(self.show_state)
        self.show_state(store.state)

    def show_recommendation(self, rows: list[ModelRow]) -> None:
        """Called by the window with the Models tab's rows whenever they change."""
        self.recommended = recommended_row(rows)
        self.show_state(self.store.state, rows)

    def show_state(self, state: NodeState, rows: list[ModelRow] | None = None) -> None:
        self.api.setText(self.links.api_url() or "starting…")
        if rows is not None:
            self.recommended = recommended_row(rows)
        r = self.recommended
        if r is None:
            return
        self.model_name.setText(f"★ {r.title}")
        self.model_info.setText(" · ".join(x for x in (r.size, r.fit, r.detail) if x))
        downloading = r.state == "downloading"
        self.progress.setVisible(downloading)
        self.progress_text.setVisible(downloading)
        if downloading:
            if r.progress is None:
                self.progress.setRange(0, 0)
            else:
                self.progress.setRange(0, 1000)
                self.progress.setValue(int(r.progress * 1000))
            self.progress_text.setText(r.progress_text)
        if r.state == "available" or r.state == "error":
            self.download.setText("Download")
            self.download.setEnabled(True)
        elif downloading:
            self.download.setText("Downloading…")
            self.download.setEnabled(False)
        else:
            self.download.setText("Downloaded ✓")
            self.download.setEnabled(False)

    def _download(self) -> None:
        if self.recommended is None:
            return
        self.banner.clear()

        def done(res: ApiResult) -> None:
            if not res.ok:
                self.banner.show_message(res.error or "the download could not start")

        self.node_actions.model("download", self.recommended.id, on_done=done)

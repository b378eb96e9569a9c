"""The main window ("Open ClosedMesh…"): Overview, Peers, Models and Settings tabs, plus the first-run
Welcome tab."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import QLabel, QMainWindow, QTabWidget, QVBoxLayout, QWidget

from . import icons
from .pages.models import ModelsPage
from .pages.overview import OverviewPage
from .pages.peers import PeersPage
from .pages.settings_page import SettingsPage
from .pages.welcome import WelcomePage
from .state import NodeState, status_line
from .widgets import Banner

if TYPE_CHECKING:
    from .controller import AppController


class MainWindow(QMainWindow):
    def __init__(self, controller: "AppController") -> None:
        super().__init__()
        self.controller = controller
        self.setWindowTitle("ClosedMesh")
        self.setWindowIcon(icons.app_icon())
        self.resize(980, 680)
        central = QWidget()
        lay = QVBoxLayout(central)
        lay.setContentsMargins(8, 8, 8, 8)
        self.banner = Banner()
        lay.addWidget(self.banner)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        lay.addWidget(self.tabs, 1)
        self.setCentralWidget(central)

        self.overview = OverviewPage(controller)
        self.peers = PeersPage(controller)
        self.models = ModelsPage(controller)
        self.settings = SettingsPage(controller)
        self.welcome: WelcomePage | None = None
        self.tabs.addTab(self.overview, "Overview")
        self.tabs.addTab(self.peers, "Peers")
        self.tabs.addTab(self.models, "Models")
        self.tabs.addTab(self.settings, "Settings")

        self.status = QLabel()
        self.statusBar().addWidget(self.status, 1)
        controller.store.changed.connect(self._render_status)
        self._render_status(controller.store.state)

    def _render_status(self, state: NodeState) -> None:
        self.status.setText(status_line(state))

    def add_welcome(self) -> WelcomePage:
        """The first-run Welcome tab, first and selected; "Got it" closes it."""
        if self.welcome is None:
            self.welcome = WelcomePage(self.controller)
            self.models.rows_changed.connect(self.welcome.show_recommendation)
            self.welcome.show_recommendation(self.models.rows)
            self.welcome.done.connect(self.close_welcome)
            self.tabs.insertTab(0, self.welcome, "Welcome")
        self.tabs.setCurrentWidget(self.welcome)
        return self.welcome

    def close_welcome(self) -> None:
        if self.welcome is not None:
            self.tabs.removeTab(self.tabs.indexOf(self.welcome))
            self.welcome.deleteLater()
            self.welcome = None
            self.tabs.setCurrentWidget(self.overview)

    def show_tab(self, name: str) -> None:
        page = {"overview": self.overview, "peers": self.peers, "models": self.models, "settings": self.settings,
                "welcome": self.welcome}.get(name)
        if page is not None:
            self.tabs.setCurrentWidget(page)

    def bring_forward(self) -> None:
        self.show()
        if self.isMinimized():
            self.showNormal()
        self.raise_()
        self.activateWindow()

    def closeEvent(self, event: QCloseEvent) -> None:
        # With a tray icon the window only hides (the node keeps serving). Without one the window is
        # the app: closing it quits, rather than leaving a node running that nothing shows.
        if self.controller.quitting or self.controller.tray_visible:
            event.accept()
            return
        event.ignore()
        self.controller.quit()

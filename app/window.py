"""The main window ("Open ClosedMesh…"): Overview, Peers, Models and Settings tabs, plus the first-run
Welcome tab.

It builds the pages from what they render and act through (the store, the mesh toggle, the node's
actions, the links, the app's settings, start at login) and passes their requests up as its own
signals; the owner decides (join, open the chat, save the settings, restart the node, quit)."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import QLabel, QMainWindow, QTabWidget, QVBoxLayout, QWidget

from . import icons
from .actions import NodeActions
from .links import Links
from .mesh import MeshToggle
from .pages.models import ModelsPage
from .pages.overview import OverviewPage
from .pages.peers import PeersPage
from .pages.settings_page import SettingsPage
from .pages.welcome import WelcomePage
from .settings import AppSettings
from .start_at_login import StartAtLogin
from .state import NodeState, status_line
from .store import NodeStore
from .widgets import Banner


class MainWindow(QMainWindow):
    join_requested = Signal(bool)  # a page's Join/Leave button: join (True) or leave
    open_chat_requested = Signal()
    save_settings_requested = Signal()  # Settings changed the AppSettings: write them
    restart_on_port_requested = Signal(int)  # Settings chose another port for the node
    quit_requested = Signal()  # closed while it is the app (no tray icon)

    def __init__(
        self,
        store: NodeStore,
        toggle: MeshToggle,
        actions: NodeActions,
        links: Links,
        settings: AppSettings,
        start_at_login: StartAtLogin,
        *,
        attached: bool,
    ) -> None:
        super().__init__()
        self.store = store
        self.node_actions = actions
        self.links = links
        # With a tray icon closing the window only hides it (the node keeps serving); without one the
        # window is the app and closing it asks to quit. The owner sets this (and clears it to quit).
        self.close_quits = True
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

        self.overview = OverviewPage(store, toggle, links)
        self.overview.join_requested.connect(self.join_requested)
        self.overview.open_chat_requested.connect(self.open_chat_requested)
        self.peers = PeersPage(store)
        self.models = ModelsPage(store, actions)
        self.settings = SettingsPage(store, actions, links, settings, start_at_login, attached=attached)
        self.settings.save_requested.connect(self.save_settings_requested)
        self.settings.restart_on_port_requested.connect(self.restart_on_port_requested)
        self.welcome: WelcomePage | None = None
        self.tabs.addTab(self.overview, "Overview")
        self.tabs.addTab(self.peers, "Peers")
        self.tabs.addTab(self.models, "Models")
        self.tabs.addTab(self.settings, "Settings")

        self.status = QLabel()
        self.statusBar().addWidget(self.status, 1)
        store.changed.connect(self._render_status)
        self._render_status(store.state)

    def _render_status(self, state: NodeState) -> None:
        self.status.setText(status_line(state))

    def add_welcome(self) -> WelcomePage:
        """The first-run Welcome tab, first and selected; "Got it" closes it."""
        if self.welcome is None:
            self.welcome = WelcomePage(self.store, self.node_actions, self.links)
            self.welcome.open_chat_requested.connect(self.open_chat_requested)
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
        page = {
            "overview": self.overview,
            "peers": self.peers,
            "models": self.models,
            "settings": self.settings,
            "welcome": self.welcome,
        }.get(name)
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
        if not self.close_quits:
            event.accept()
            return
        event.ignore()
        self.quit_requested.emit()

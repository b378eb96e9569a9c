"""The tray icon and its menu: status line, Join the mesh, Models, Open Chat, Open ClosedMesh…, Start at
login, Quit. The icon's look follows the node's state (app/icons.py).

It renders the store and the mesh toggle and asks its owner for everything else through its signals
(join, load a model, open the chat or the window, quit); start at login it turns itself."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from . import icons
from .links import Links
from .mesh import MeshToggle
from .start_at_login import StartAtLogin
from .state import MODEL_STATE_WORDS, NodeState, local_models, status_line, tooltip, tray_kind
from .store import NodeStore


class Tray(QObject):
    join_requested = Signal(bool)  # the "Join the mesh" check mark was clicked: join (True) or leave
    model_load_requested = Signal(str, bool)  # a model of the Models submenu: load (True) or unload it
    open_chat_requested = Signal()
    show_window_requested = Signal(str)  # the window, on this tab ("" = as it is)
    quit_requested = Signal()

    def __init__(
        self, store: NodeStore, toggle: MeshToggle, links: Links, start_at_login: StartAtLogin, available: bool
    ) -> None:
        super().__init__()
        self.store = store
        self.toggle = toggle
        self.links = links
        self.start_at_login = start_at_login
        self.available = available
        self.kind = "starting"
        self.menu = QMenu()
        self.menu.setToolTipsVisible(True)

        self.status_action = self.menu.addAction("Starting…")
        self.status_action.setEnabled(False)
        self.menu.addSeparator()
        self.join_action = self.menu.addAction("Join the mesh")
        self.join_action.setCheckable(True)
        self.join_action.triggered.connect(lambda on: self.join_requested.emit(on))
        self.models_menu = self.menu.addMenu("Models")
        self._models_shape: list[tuple[str, str]] | None = None
        self.menu.addSeparator()
        self.chat_action = self.menu.addAction("Open Chat")
        self.chat_action.triggered.connect(self.open_chat_requested.emit)
        self.window_action = self.menu.addAction("Open ClosedMesh…")
        self.window_action.triggered.connect(lambda: self.show_window_requested.emit(""))
        self.menu.addSeparator()
        self.autostart_action = self.menu.addAction("Start at login")
        self.autostart_action.setCheckable(True)
        self.autostart_action.setChecked(start_at_login.enabled())
        self.autostart_action.triggered.connect(self._autostart)
        start_at_login.changed.connect(self.autostart_action.setChecked)
        self.quit_action = self.menu.addAction("Quit ClosedMesh")
        self.quit_action.triggered.connect(self.quit_requested.emit)

        self.icon = QSystemTrayIcon(icons.icon("starting"))
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self.menu.aboutToShow.connect(self._about_to_show)

        store.changed.connect(self.render)
        toggle.changed.connect(self._render_toggle)
        self.render(store.state)
        if available:
            self.icon.show()

    @property
    def visible(self) -> bool:
        return self.available and self.icon.isVisible()

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        # A left click opens the window on Windows and Linux; on macOS any click opens the menu.
        if reason in (QSystemTrayIcon.ActivationReason.Trigger, QSystemTrayIcon.ActivationReason.DoubleClick):
            self.show_window_requested.emit("")

    def _about_to_show(self) -> None:
        self.autostart_action.setChecked(self.start_at_login.enabled())

    def _autostart(self, on: bool) -> None:
        self.start_at_login.set(on)
        self.autostart_action.setChecked(self.start_at_login.enabled())  # the truth, also after a failure

    def _render_toggle(self) -> None:
        v = self.toggle.view()
        self.join_action.setChecked(v.checked)
        self.join_action.setEnabled(v.enabled)
        self.join_action.setText(v.text)

    def render(self, state: NodeState) -> None:
        kind = tray_kind(state)
        if kind != self.kind:
            self.kind = kind
            self.icon.setIcon(icons.icon(kind))
        self.status_action.setText(status_line(state))
        port = self.links.port
        self.icon.setToolTip(tooltip(state, port))
        self.chat_action.setEnabled(port is not None)
        self._render_toggle()
        self._render_models(state)

    def render_models(self, state: NodeState) -> None:
        """Rebuild the Models submenu even when nothing changed (an action failed: undo its check mark)."""
        self._models_shape = None
        self._render_models(state)

    def _render_models(self, state: NodeState) -> None:
        models = local_models(state)
        shape = [(m["id"], m["state"]) for m in models]
        if shape == self._models_shape:
            return
        self._models_shape = shape
        self.models_menu.clear()
        if not models:
            empty = self.models_menu.addAction("No models on this computer yet")
            empty.setEnabled(False)
        for m in models:
            mid, st = m["id"], m["state"]
            busy = st in ("loading", "unloading")
            a = QAction(f"{mid} — {MODEL_STATE_WORDS.get(st, st)}" if busy else mid, self.models_menu)
            a.setCheckable(True)
            a.setChecked(st == "ready")
            a.setEnabled(not busy)
            a.setToolTip("Loaded: click to unload" if st == "ready" else "Click to load it now")
            a.triggered.connect(lambda on, mid=mid: self.model_load_requested.emit(mid, on))
            self.models_menu.addAction(a)
        self.models_menu.addSeparator()
        manage = self.models_menu.addAction("Download models…")
        manage.triggered.connect(lambda: self.show_window_requested.emit("models"))

    def notify(self, title: str, message: str, error: bool = True) -> None:
        if self.visible:
            self.icon.showMessage(
                title,
                message,
                QSystemTrayIcon.MessageIcon.Warning if error else QSystemTrayIcon.MessageIcon.Information,
                8000,
            )

    def hide(self) -> None:
        self.icon.hide()

    def dispose(self) -> None:
        """Delete the Qt objects without a parent, on the Qt thread (the app's quit calls this)."""
        self.icon.hide()
        self.icon.setContextMenu(None)  # type: ignore[arg-type]  # Qt takes a null menu: detach it
        self.icon.deleteLater()
        self.menu.deleteLater()
        self.deleteLater()

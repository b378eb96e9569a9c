"""The tray icon and its menu: status line, Join the mesh, Models, Open Chat, Open ClosedMesh…, Start at
login, Quit. The icon's look follows the node's state (app/icons.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from . import icons
from .state import MODEL_STATE_WORDS, NodeState, local_models, status_line, tooltip, tray_kind

if TYPE_CHECKING:
    from .controller import AppController


class Tray(QObject):
    def __init__(self, controller: "AppController", available: bool) -> None:
        super().__init__()
        self.controller = controller
        self.available = available
        self.kind = "starting"
        self.menu = QMenu()
        self.menu.setToolTipsVisible(True)

        self.status_action = self.menu.addAction("Starting…")
        self.status_action.setEnabled(False)
        self.menu.addSeparator()
        self.join_action = self.menu.addAction("Join the mesh")
        self.join_action.setCheckable(True)
        self.join_action.triggered.connect(lambda on: controller.toggle.set_wanted(on))
        self.models_menu = self.menu.addMenu("Models")
        self._models_shape: list[tuple[str, str]] | None = None
        self.menu.addSeparator()
        self.chat_action = self.menu.addAction("Open Chat")
        self.chat_action.triggered.connect(controller.open_chat)
        self.window_action = self.menu.addAction("Open ClosedMesh…")
        self.window_action.triggered.connect(lambda: controller.show_window())
        self.menu.addSeparator()
        self.autostart_action = self.menu.addAction("Start at login")
        self.autostart_action.setCheckable(True)
        self.autostart_action.setChecked(controller.autostart_enabled())
        self.autostart_action.triggered.connect(self._autostart)
        controller.autostart_changed.connect(self.autostart_action.setChecked)
        self.quit_action = self.menu.addAction("Quit ClosedMesh")
        self.quit_action.triggered.connect(controller.quit)

        self.icon = QSystemTrayIcon(icons.icon("starting"))
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self.menu.aboutToShow.connect(self._about_to_show)

        controller.store.changed.connect(self.render)
        controller.toggle.changed.connect(self._render_toggle)
        self.render(controller.store.state)
        if available:
            self.icon.show()

    @property
    def visible(self) -> bool:
        return self.available and self.icon.isVisible()

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        # A left click opens the window on Windows and Linux; on macOS any click opens the menu.
        if reason in (QSystemTrayIcon.ActivationReason.Trigger, QSystemTrayIcon.ActivationReason.DoubleClick):
            self.controller.show_window()

    def _about_to_show(self) -> None:
        self.autostart_action.setChecked(self.controller.autostart_enabled())

    def _autostart(self, on: bool) -> None:
        self.controller.set_autostart(on)
        self.autostart_action.setChecked(self.controller.autostart_enabled())  # the truth, also after a failure

    def _render_toggle(self) -> None:
        v = self.controller.toggle.view()
        self.join_action.setChecked(v.checked)
        self.join_action.setEnabled(v.enabled)
        self.join_action.setText(v.text)

    def render(self, state: NodeState) -> None:
        kind = tray_kind(state)
        if kind != self.kind:
            self.kind = kind
            self.icon.setIcon(icons.icon(kind))
        self.status_action.setText(status_line(state))
        self.icon.setToolTip(tooltip(state, self.controller.port))
        self.chat_action.setEnabled(self.controller.port is not None)
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
            a.triggered.connect(lambda on, mid=mid: self.controller.set_model_loaded(mid, on))
            self.models_menu.addAction(a)
        self.models_menu.addSeparator()
        manage = self.models_menu.addAction("Download models…")
        manage.triggered.connect(lambda: self.controller.show_window("models"))

    def notify(self, title: str, message: str, error: bool = True) -> None:
        if self.visible:
            self.icon.showMessage(title, message, QSystemTrayIcon.MessageIcon.Warning if error
                                  else QSystemTrayIcon.MessageIcon.Information, 8000)

    def hide(self) -> None:
        self.icon.hide()

    def dispose(self) -> None:
        """Delete the Qt objects without a parent (see AppController.quit)."""
        self.icon.hide()
        self.icon.setContextMenu(None)
        self.icon.deleteLater()
        self.menu.deleteLater()
        self.deleteLater()

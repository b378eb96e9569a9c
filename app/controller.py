"""The app's composition root: starts the node (RuntimeHost), follows it (NodeClient → NodeStore), and
owns the tray, the main window, the mesh toggle and the settings. It hands the views what they render
and act through (the store, the toggle, NodeActions, Links, the settings, start at login) and answers
their requests (signals): join or leave, load a model, open the chat or the window, save the
settings, move the node to another port, quit. No view imports this module.

Lifecycle: ``start()`` binds the port and starts the node (a taken port opens the port dialog);
``quit()`` closes the client, stops the node (running generations end with an explicit error; the
node leaves the mesh's directory) and joins its thread — nothing is left running.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PySide6.QtCore import QObject, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QSystemTrayIcon

from runtime.config import Paths, ServeSettings

from . import autostart as autostart_backends
from .actions import NodeActions
from .client import ApiResult, NodeClient
from .dialogs import PortDialog
from .links import Links
from .mesh import MeshToggle
from .runtime_host import PortInUse, RuntimeHost, next_free_port
from .settings import AppSettings, SettingsStore
from .start_at_login import StartAtLogin
from .store import NodeStore
from .tray import Tray
from .window import MainWindow

log = logging.getLogger(__name__)


def app_command() -> list[str]:
    """How the OS should start this app at login (minimized to the tray)."""
    if getattr(sys, "frozen", False):  # the PyInstaller bundle
        # In an AppImage the bundle runs from a temporary mount: start the AppImage itself (its runtime
        # sets APPIMAGE to the file's path).
        return [os.environ.get("APPIMAGE") or sys.executable, "--minimized"]
    script = Path(sys.executable).parent / ("closedmesh-app.exe" if os.name == "nt" else "closedmesh-app")
    if script.exists():
        return [str(script), "--minimized"]
    return [sys.executable, "-m", "app.main", "--minimized"]


class AppController(QObject):
    _runtime_exited = Signal(object, object)  # (host, error): from the runtime thread to the Qt thread
    _restart_ready = Signal(int)  # the old node stopped: start on this port (from a helper thread)

    def __init__(
        self,
        paths: Paths,
        serve_settings: ServeSettings | None = None,
        *,
        tray_available: bool | None = None,
        open_url: Callable[[QUrl], Any] | None = None,
        autostart: autostart_backends.Autostart | None = None,
        autostart_command: list[str] | None = None,
        on_quit: Callable[[], None] | None = None,
        on_started: Callable[[int], None] | None = None,
        attach: tuple[str, str] | None = None,
        port_override: int | None = None,
    ) -> None:
        super().__init__()
        self.paths = paths
        paths.ensure()
        self.serve_settings = serve_settings or ServeSettings()
        self.settings_store = SettingsStore(paths.config)
        self.settings: AppSettings = self.settings_store.load()
        self.port_override = port_override  # --port on the command line wins over the settings, once
        self.tray_available = QSystemTrayIcon.isSystemTrayAvailable() if tray_available is None else tray_available
        self._on_quit = on_quit
        self._on_started = on_started
        self._attach = attach
        self.host: RuntimeHost | None = None
        self.client: NodeClient | None = None
        self.port_dialog: PortDialog | None = None
        self.quitting = False
        self._restarting: threading.Thread | None = None

        self.store = NodeStore(self)
        self.actions = NodeActions(self.store)
        self.links = Links(lambda: self.port, open_url or QDesktopServices.openUrl)
        self.start_at_login = StartAtLogin(
            autostart or autostart_backends.for_platform(), autostart_command or app_command(), self
        )
        self.start_at_login.failed.connect(lambda msg: self.notify(msg))
        self.toggle = MeshToggle(self.store, self.settings, self.actions, self)
        self.toggle.failed.connect(lambda msg: self.notify(msg))
        self.toggle.needs_target.connect(self._choose_mesh)
        self.toggle.invite_spent.connect(self._forget_invite)
        self._runtime_exited.connect(self._on_runtime_exited)
        self._restart_ready.connect(self._start_after_restart)

        self.tray = Tray(self.store, self.toggle, self.links, self.start_at_login, self.tray_available)
        self.tray.join_requested.connect(self.toggle.set_wanted)
        self.tray.model_load_requested.connect(self.set_model_loaded)
        self.tray.open_chat_requested.connect(self.links.open_chat)
        self.tray.show_window_requested.connect(self.show_window)
        self.tray.quit_requested.connect(self.quit)

        self.window = MainWindow(
            self.store,
            self.toggle,
            self.actions,
            self.links,
            self.settings,
            self.start_at_login,
            attached=self.attached,
        )
        self.window.close_quits = not self.tray_visible
        self.window.join_requested.connect(self.toggle.set_wanted)
        self.window.open_chat_requested.connect(self.links.open_chat)
        self.window.save_settings_requested.connect(self.save_settings)
        self.window.restart_on_port_requested.connect(self.change_port)
        self.window.quit_requested.connect(self.quit)

    # -- properties --------------------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        if self.host is not None and self.host.running:
            return self.host.port
        if self._attach is not None:
            return urlsplit(self._attach[0]).port
        return None

    @property
    def attached(self) -> bool:
        """The app follows a node it did not start (it cannot move or stop it)."""
        return self._attach is not None

    @property
    def tray_visible(self) -> bool:
        return self.tray.visible

    # -- start -------------------------------------------------------------------------------------------

    def start(self, show_window: bool = True) -> None:
        first_run = not self.settings.welcome_shown
        if first_run:
            self.window.add_welcome()
            self.settings.welcome_shown = True  # remembered as soon as it is shown
            self.save_settings()
        if show_window or first_run or not self.tray_available:
            self.window.bring_forward()
        if self._attach is not None:
            self._connect(*self._attach)
        else:
            self.start_runtime(self.settings.port if self.port_override is None else self.port_override)

    def start_runtime(self, port: int) -> bool:
        host = RuntimeHost(replace(self.serve_settings, port=port), self.paths)
        host.on_exit = lambda error, h=host: self._runtime_exited.emit(h, error)
        try:
            host.start()
        except PortInUse as e:
            self._port_in_use(str(e), port)
            return False
        except Exception as e:  # a --model that cannot be served, a folder that cannot be written
            log.exception("the node could not start")
            self.store.set_start_error(f"the node could not start: {e}")
            self.notify(f"The node could not start: {e}")
            return False
        self.host = host
        self.store.set_start_error(None)
        self._connect(host.base_url, host.admin_token)
        log.info("the node is serving on %s", host.base_url)
        if self._on_started is not None:
            self._on_started(host.port)
        return True

    def _connect(self, base_url: str, token: str) -> None:
        if self.client is None:
            self.client = NodeClient(base_url, token, self)
            self.store.attach(self.client)
            self.client.start_events()
        else:
            self.client.set_base_url(base_url, token)
        self.store.changed.emit(self.store.state)  # the port shown everywhere changed

    def _port_in_use(self, message: str, port: int) -> None:
        self.store.set_start_error(f"port {port} is in use")
        dialog = PortDialog(message, next_free_port(self.serve_settings.host, port), self.window)
        self.port_dialog = dialog

        def accepted() -> None:
            chosen = dialog.port.value()
            if dialog.remember.isChecked():
                self.settings.port = chosen
                self.save_settings()
            self.port_dialog = None
            self.port_override = None
            self.start_runtime(chosen)

        def rejected() -> None:
            self.port_dialog = None
            self.quit()

        dialog.accepted.connect(accepted)
        dialog.rejected.connect(rejected)
        dialog.open()  # window-modal, never blocks the event loop

    def _on_runtime_exited(self, host: RuntimeHost, error: BaseException | None) -> None:
        if self.quitting or host is not self.host or self._restarting is not None:
            return
        why = f": {error}" if error else ""
        self.store.set_start_error(f"the node stopped unexpectedly{why}")
        self.notify(f"The node stopped unexpectedly{why}. Quit and start ClosedMesh again.")

    def change_port(self, port: int) -> None:
        """Restart the node on another port (Settings). The old one stops on a helper thread; the UI
        keeps running meanwhile."""
        if self.attached or self.port == port or self._restarting is not None:
            return
        old = self.host
        if self.client is not None:
            self.client.stop_events()  # an open stream would hold the old node's shutdown for seconds

        def stop_then_signal() -> None:
            if old is not None:
                old.stop()
            self._restart_ready.emit(port)

        self._restarting = threading.Thread(target=stop_then_signal, name="closedmesh-restart")
        self._restarting.start()

    def _start_after_restart(self, port: int) -> None:
        if self._restarting is not None:
            self._restarting.join()
            self._restarting = None
        if not self.quitting:
            self.start_runtime(port)

    def _forget_invite(self, invite: str) -> None:
        """Joined with this invite: it is single-use, so it is not kept (nor shown) for the next join,
        which rejoins the node's saved mesh instead."""
        if self.settings.forget_spent_invite(invite):
            self.save_settings()
        self.window.settings.forget_invite(invite)

    def _choose_mesh(self) -> None:
        self.show_window("settings")
        self.window.settings.invite.setFocus()

    # -- actions -------------------------------------------------------------------------------------------

    def save_settings(self) -> None:
        try:
            self.settings_store.save(self.settings)
        except OSError as e:
            self.notify(f"Could not save the settings ({e}).")

    def notify(self, message: str, kind: str = "error") -> None:
        self.window.banner.show_message(message, kind)
        self.tray.notify("ClosedMesh", message, error=kind == "error")

    def show_window(self, tab: str | None = None) -> None:
        if tab:
            self.window.show_tab(tab)
        self.window.bring_forward()

    def set_model_loaded(self, model: str, loaded: bool) -> None:
        """The tray's Models submenu."""

        def done(r: ApiResult) -> None:
            if not r.ok:
                self.notify(f"Could not {'load' if loaded else 'unload'} {model}: {r.error}")
                self.tray.render_models(self.store.state)  # put the check mark back where it belongs
            self.store.refresh()

        self.actions.model("load" if loaded else "unload", model, on_done=done)

    # -- quit -----------------------------------------------------------------------------------------------

    def quit(self) -> None:
        """Leave the mesh, stop the node and every thread of ours, then end the app."""
        if self.quitting:
            return
        self.quitting = True
        self.window.close_quits = False  # closing the window is part of this quit now
        self.tray.hide()
        if self.port_dialog is not None:
            self.port_dialog.close()
        self.window.hide()
        # No POST /api/mesh/leave here: that would also forget the mesh. The node's own shutdown
        # answers the peers' requests running here with "shutting down", leaves the directory at once
        # and keeps the setting, so the next start rejoins.
        self.store.detach()
        # The client first: an open events stream would hold the node's shutdown for seconds.
        if self.client is not None:
            self.client.close()
        if self._restarting is not None:
            self._restarting.join(60)
            self._restarting = None
        if self.host is not None:
            self.host.stop()
        self.window.close()
        # Qt objects are deleted here, on the Qt thread, once control returns to the event loop; left
        # to Python's garbage collector they could be destroyed on another thread, which crashes Qt.
        self.tray.dispose()
        self.window.deleteLater()
        self.deleteLater()
        log.info("ClosedMesh app stopped")
        if self._on_quit is not None:
            self._on_quit()

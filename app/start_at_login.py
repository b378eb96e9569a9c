"""Start at login as the UI sees it: one switch over the OS backend (app/autostart.py) that the tray
and the Settings page both show, with ``changed`` when it turns and ``failed`` with plain words when
the OS refused."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from .autostart import Autostart


class StartAtLogin(QObject):
    changed = Signal(bool)  # turned on/off (from the tray or Settings): every view shows the new truth
    failed = Signal(str)  # the OS refused: plain words

    def __init__(self, backend: Autostart, command: list[str], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.backend = backend
        self.command = command  # how the OS starts the app at login

    def enabled(self) -> bool:
        try:
            return self.backend.is_enabled()
        except OSError:
            return False

    def set(self, on: bool) -> str | None:
        """Turn start at login on or off; a plain-words error (also sent as ``failed``), or None."""
        try:
            if on:
                self.backend.enable(self.command)
            else:
                self.backend.disable()
        except OSError as e:
            message = f"Could not {'turn on' if on else 'turn off'} start at login: {e}"
            self.failed.emit(message)
            return message
        self.changed.emit(self.enabled())
        return None

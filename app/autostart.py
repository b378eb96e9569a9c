"""Start at login: one backend per OS behind one small interface (no Qt here).

- macOS: a LaunchAgent plist in ~/Library/LaunchAgents (RunAtLoad).
- Windows: a value under HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run.
- Linux and other XDG desktops: a .desktop file in $XDG_CONFIG_HOME/autostart.

Off by default: nothing is written until the user (or the installer) turns it on.
"""

from __future__ import annotations

import os
import platform
import plistlib
import subprocess
from pathlib import Path
from typing import Any, Protocol

APP_ID = "com.closedmesh.node"
APP_NAME = "ClosedMesh"


class Autostart(Protocol):
    def is_enabled(self) -> bool: ...

    def enable(self, command: list[str]) -> None: ...

    def disable(self) -> None: ...


class MacLaunchAgent:
    def __init__(self, home: Path | None = None) -> None:
        self.path = (home or Path.home()) / "Library" / "LaunchAgents" / f"{APP_ID}.plist"

    def is_enabled(self) -> bool:
        return self.path.is_file()

    def enable(self, command: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "Label": APP_ID,
            "ProgramArguments": list(command),
            "RunAtLoad": True,
            "KeepAlive": False,  # quitting from the tray must stay quit
            "ProcessType": "Interactive",
        }
        tmp = self.path.with_suffix(".plist.tmp")
        with open(tmp, "wb") as f:
            plistlib.dump(data, f)
        os.replace(tmp, self.path)

    def disable(self) -> None:
        self.path.unlink(missing_ok=True)


class Registry(Protocol):
    """The few HKCU operations needed; the real one wraps winreg, tests use a dict."""

    def get(self, key: str, name: str) -> str | None: ...

    def set(self, key: str, name: str, value: str) -> None: ...

    def delete(self, key: str, name: str) -> None: ...


class WinReg:
    def __init__(self) -> None:
        import winreg

        self._w: Any = winreg  # typeshed declares winreg's members for win32 only

    def get(self, key: str, name: str) -> str | None:
        try:
            with self._w.OpenKey(self._w.HKEY_CURRENT_USER, key) as k:
                return self._w.QueryValueEx(k, name)[0]
        except FileNotFoundError:
            return None

    def set(self, key: str, name: str, value: str) -> None:
        with self._w.CreateKey(self._w.HKEY_CURRENT_USER, key) as k:
            self._w.SetValueEx(k, name, 0, self._w.REG_SZ, value)

    def delete(self, key: str, name: str) -> None:
        try:
            with self._w.OpenKey(self._w.HKEY_CURRENT_USER, key, 0, self._w.KEY_SET_VALUE) as k:
                self._w.DeleteValue(k, name)
        except FileNotFoundError:
            pass


class WindowsRunKey:
    KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or WinReg()

    def is_enabled(self) -> bool:
        return self.registry.get(self.KEY, APP_NAME) is not None

    def enable(self, command: list[str]) -> None:
        self.registry.set(self.KEY, APP_NAME, subprocess.list2cmdline(command))

    def disable(self) -> None:
        self.registry.delete(self.KEY, APP_NAME)


class XdgAutostart:
    def __init__(self, config_home: Path | None = None) -> None:
        base = config_home or Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        self.path = base / "autostart" / "closedmesh.desktop"

    def is_enabled(self) -> bool:
        return self.path.is_file()

    def enable(self, command: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        # Desktop Entry Exec quoting: arguments with spaces or specials in double quotes, with
        # backslash escapes for ", `, $ and \\ inside them; a literal % is written as %%.
        def quote(arg: str) -> str:
            arg = arg.replace("%", "%%")
            if arg and all(c.isalnum() or c in "-_./=:,+@" for c in arg):
                return arg
            return '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'

        text = (
            "[Desktop Entry]\n"
            "Type=Application\n"
            f"Name={APP_NAME}\n"
            "Comment=Peer-to-peer LLM node\n"
            f"Exec={' '.join(quote(a) for a in command)}\n"
            "Terminal=false\n"
            "X-GNOME-Autostart-enabled=true\n"
        )
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)

    def disable(self) -> None:
        self.path.unlink(missing_ok=True)


def for_platform(system: str | None = None) -> Autostart:
    system = system or platform.system()
    if system == "Darwin":
        return MacLaunchAgent()
    if system == "Windows":
        return WindowsRunKey()
    return XdgAutostart()

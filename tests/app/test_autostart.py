"""Start-at-login backends: what each one writes (Windows through a fake registry)."""

from __future__ import annotations

import configparser
import plistlib

import pytest

from app.autostart import (APP_ID, MacLaunchAgent, WindowsRunKey, XdgAutostart, for_platform)

COMMAND = ["/Applications/Close Mesh.app/Contents/MacOS/closedmesh-app", "--minimized", "--name=50% \"x\" $HOME"]


def desktop_exec_split(line: str) -> list[str]:
    """Read an Exec value the way the Desktop Entry spec defines it: arguments separated by spaces;
    inside double quotes a backslash escapes ", `, $ and \\; '%%' is a literal '%'."""
    args, cur, quoted, i, started = [], [], False, 0, False
    while i < len(line):
        c = line[i]
        if quoted:
            if c == "\\" and i + 1 < len(line) and line[i + 1] in '"`$\\':
                cur.append(line[i + 1])
                i += 1
            elif c == '"':
                quoted = False
            else:
                cur.append(c)
        elif c == '"':
            quoted, started = True, True
        elif c == " ":
            if cur or started:
                args.append("".join(cur))
            cur, started = [], False
        else:
            cur.append(c)
        i += 1
    if cur or started:
        args.append("".join(cur))
    return [a.replace("%%", "%") for a in args]


class FakeRegistry:
    def __init__(self) -> None:
        self.values: dict[tuple[str, str], str] = {}

    def get(self, key, name):
        return self.values.get((key, name))

    def set(self, key, name, value):
        self.values[(key, name)] = value

    def delete(self, key, name):
        self.values.pop((key, name), None)


def test_macos_launch_agent(tmp_path):
    a = MacLaunchAgent(home=tmp_path)
    assert not a.is_enabled() and not a.path.exists()  # off by default: nothing written
    a.enable(COMMAND)
    assert a.path == tmp_path / "Library" / "LaunchAgents" / f"{APP_ID}.plist"
    data = plistlib.loads(a.path.read_bytes())
    assert data["Label"] == APP_ID and data["ProgramArguments"] == COMMAND
    assert data["RunAtLoad"] is True and data["KeepAlive"] is False
    assert a.is_enabled()
    a.enable(COMMAND[:1])  # enabling again replaces, never duplicates
    assert plistlib.loads(a.path.read_bytes())["ProgramArguments"] == COMMAND[:1]
    a.disable()
    assert not a.is_enabled() and not a.path.exists()
    a.disable()  # idempotent


def test_windows_run_key_through_a_fake_registry():
    reg = FakeRegistry()
    w = WindowsRunKey(reg)
    assert not w.is_enabled()
    cmd = [r"C:\Program Files\ClosedMesh\closedmesh-app.exe", "--minimized"]
    w.enable(cmd)
    assert reg.values == {(r"Software\Microsoft\Windows\CurrentVersion\Run", "ClosedMesh"):
                          '"C:\\Program Files\\ClosedMesh\\closedmesh-app.exe" --minimized'}
    assert w.is_enabled()
    w.disable()
    assert reg.values == {} and not w.is_enabled()


def test_xdg_autostart_desktop_file(tmp_path):
    x = XdgAutostart(config_home=tmp_path)
    assert not x.is_enabled()
    x.enable(COMMAND)
    assert x.path == tmp_path / "autostart" / "closedmesh.desktop"
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    cp.read_string(x.path.read_text())
    entry = cp["Desktop Entry"]
    assert entry["Type"] == "Application" and entry["Name"] == "ClosedMesh"
    assert entry["X-GNOME-Autostart-enabled"] == "true" and entry["Terminal"] == "false"
    # the Exec line reads back as the same argument list (%% is a literal %)
    assert desktop_exec_split(entry["Exec"]) == COMMAND
    x.disable()
    assert not x.path.exists()


def test_xdg_respects_xdg_config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert XdgAutostart().path == tmp_path / "cfg" / "autostart" / "closedmesh.desktop"


@pytest.mark.parametrize("system, kind", [("Darwin", MacLaunchAgent), ("Linux", XdgAutostart),
                                          ("FreeBSD", XdgAutostart)])
def test_backend_per_platform(system, kind):
    assert isinstance(for_platform(system), kind)

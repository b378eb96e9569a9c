"""The README's run command: the tray app with a display, the headless node without one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.launch import command, display_available

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("system, env, gui", [
    ("Linux", {}, False),
    ("Linux", {"DISPLAY": ":0"}, True),
    ("Linux", {"WAYLAND_DISPLAY": "wayland-0"}, True),
    ("Linux", {"DISPLAY": "  "}, False),
    ("FreeBSD", {"DISPLAY": ":1"}, True),
    ("Darwin", {}, True),
    ("Windows", {}, True),
    ("Linux", {"DISPLAY": ":0", "CLOSEDMESH_HEADLESS": "1"}, False),
    ("Darwin", {"CLOSEDMESH_HEADLESS": "yes"}, False),
    ("Linux", {"DISPLAY": ":0", "CLOSEDMESH_HEADLESS": "0"}, True),
])
def test_display_decision(system, env, gui):
    assert display_available(system, env) is gui


def test_commands_pass_the_arguments_through():
    b = Path("/venv/bin")
    assert command(True, b, ["--port", "9444"]) == ["/venv/bin/closedmesh-app", "--port", "9444"]
    assert command(False, b, ["--port", "9444"]) == ["/venv/bin/closedmesh", "serve", "--port", "9444"]
    assert command(True, Path("C:/v/Scripts"), [], windows=True) == ["C:/v/Scripts/closedmesh-app.exe"]


def test_run_script_goes_through_the_launcher():
    text = (REPO / "scripts" / "run.sh").read_text()
    assert 'exec "$ROOT/.venv/bin/python" -m app.launch "$@"' in text


@pytest.mark.parametrize("display, expect", [(None, "usage: closedmesh serve"), (":99", "usage: closedmesh-app")])
def test_the_launcher_execs_the_right_program(display, expect):
    """Both branches for real (with --help, so neither needs a display nor starts a node)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "CLOSEDMESH_HEADLESS")}
    if display:
        env["DISPLAY"] = display
    p = subprocess.run([sys.executable, "-m", "app.launch", "--help"], capture_output=True, text=True, env=env,
                       timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert expect in p.stdout

"""The node inside the app: its background thread, a port held by another program (the app offers
another one), and one app per user (a second launch brings the first window forward)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from app.runtime_host import PortInUse, RuntimeHost, next_free_port
from app.single_instance import SingleInstance, server_name
from runtime.config import Paths, ServeSettings

from tests.conftest import wait_for

from .conftest import wait_ready

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def held_port():
    """A port held by "another program" (a plain listening socket)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


def test_runtime_host_serves_on_its_own_thread_and_stops(home):
    before = set(threading.enumerate())
    host = RuntimeHost(ServeSettings(port=0, slots=1, ctx_per_slot=256), Paths.resolve())
    exits = []
    host.on_exit = exits.append
    host.start()
    assert host.running and host.port > 0
    assert host._thread.name == "closedmesh-runtime" and host._thread is not threading.current_thread()
    r = httpx.get(host.base_url + "/api/status", timeout=10)
    assert r.status_code == 200 and r.json()["node"]["port"] == host.port
    # (stopped once the model is loaded: a stop during the load leaves the engine's thread behind, a
    # runtime matter reported apart)
    wait_for(lambda: httpx.get(host.base_url + "/health", timeout=10).status_code == 200, 120, what="ready")
    assert host.stop(60) and not host.running
    assert exits == [None]  # a clean stop, reported once
    assert set(threading.enumerate()) - before == set()
    with pytest.raises(RuntimeError):
        host.start()  # one run per host


def test_runtime_host_reports_a_held_port(home, held_port):
    host = RuntimeHost(ServeSettings(port=held_port), Paths.resolve())
    with pytest.raises(PortInUse, match=f"port {held_port} on 127.0.0.1 is already in use by another program"):
        host.start()
    assert not host.running
    free = next_free_port("127.0.0.1", held_port)
    assert free > held_port
    with socket.socket() as s:
        s.bind(("127.0.0.1", free))  # really free


def test_a_held_port_makes_the_app_offer_another(qtbot, home, start_app, held_port, shot):
    c = start_app(port=held_port)
    qtbot.waitUntil(lambda: c.port_dialog is not None and c.port_dialog.isVisible(), timeout=10_000)
    d = c.port_dialog
    assert c.tray.kind == "error" and "in use" in c.tray.status_action.text()
    text = " ".join(lbl.text() for lbl in d.findChildren(type(c.window.status)))
    assert f"Port {held_port} on 127.0.0.1 is already in use by another program" in text
    assert d.port.value() > held_port
    shot(d, "dialog-port-in-use")
    chosen = d.port.value()
    d.start.click()
    wait_ready(qtbot, c)
    assert c.port == chosen
    assert httpx.get(f"http://127.0.0.1:{chosen}/health", timeout=10).status_code == 200
    saved = json.loads((Paths.resolve().config / "app-settings.json").read_text())
    assert saved["port"] == chosen  # "Use this port from now on"
    assert c.window.overview.api.text() == f"OpenAI API: http://localhost:{chosen}/v1"


def test_quitting_from_the_port_dialog(qtbot, home, start_app, held_port):
    quit_called = []
    c = start_app(port=held_port, on_quit=lambda: quit_called.append(True))
    qtbot.waitUntil(lambda: c.port_dialog is not None and c.port_dialog.isVisible(), timeout=10_000)
    c.port_dialog.quit.click()
    assert quit_called == [True] and c.quitting and c.host is None


def test_single_instance_in_process(qtbot, tmp_path):
    first = SingleInstance(tmp_path / "cfg")
    assert first.acquire()
    shown = []
    first.activated.connect(lambda: shown.append(True))
    second = SingleInstance(tmp_path / "cfg")
    assert not second.acquire()  # the lock is taken
    assert server_name(tmp_path / "cfg") == first.name == second.name
    assert server_name(tmp_path / "other") != first.name
    # (the same thread: the OS accepts the connection and buffers the message until the first one's
    # event loop reads it)
    assert second.notify_first(timeout=10)
    qtbot.waitUntil(lambda: shown == [True], timeout=10_000)
    first.release()
    third = SingleInstance(tmp_path / "cfg")
    assert third.acquire()  # released: the next app is first
    third.release()


def test_a_second_launch_brings_the_first_window_forward(qtbot, user_dirs, start_app):
    """A real second `closedmesh-app` process: it finds the first, asks it to show its window, exits 0
    without starting a node."""
    c = start_app(attach=("http://127.0.0.1:9", "token"), show=False)  # no node needed here
    single = SingleInstance(Paths.resolve().config)
    assert single.acquire()
    single.activated.connect(lambda: c.show_window())
    c.window.hide()
    try:
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
        p = subprocess.Popen([sys.executable, "-m", "app.main", "--port", "0"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        qtbot.waitUntil(lambda: c.window.isVisible(), timeout=60_000)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert "already running" in out
        assert "serving the OpenAI API" not in out  # it started no node
    finally:
        single.release()

"""Stopping a node is prompt and leaves nothing behind: with an event stream open, and in the middle of
loading its model (the desktop app restarts its node that way when the user changes the port)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import urllib.request

import psutil
import pytest

from runtime.config import Paths, ServeSettings
from runtime.node import Node
from runtime.server import bind_socket, serve

from ..conftest import FILENAME, seed_home, start_node, wait_for

pytestmark = pytest.mark.e2e


def test_open_event_stream_does_not_hold_the_shutdown(tmp_path, model_path):
    seed_home(tmp_path, model_path)
    n = start_node(tmp_path, "--model", str(tmp_path / "data" / "models" / FILENAME))
    opened, ended = threading.Event(), threading.Event()

    def listen() -> None:
        with urllib.request.urlopen(n.base_url + "/api/events", timeout=60) as r:
            for _ in r:
                opened.set()  # its first event is written at once
        ended.set()

    threading.Thread(target=listen, daemon=True).start()
    assert opened.wait(30), "the event stream did not open"
    t0 = time.monotonic()
    n.proc.send_signal(signal.SIGTERM)
    assert n.proc.wait(30) == 0
    assert time.monotonic() - t0 < 5, "an open /api/events stream held the shutdown"
    assert ended.wait(5), "the event stream was not ended"


@pytest.mark.parametrize("delay", [0.05, 0.3])
def test_stop_while_the_model_loads_leaves_no_engine_behind(tmp_path, model_path, monkeypatch, delay):
    seed_home(tmp_path, model_path)
    monkeypatch.setenv("CLOSEDMESH_HOME", str(tmp_path))
    settings = ServeSettings(port=0, models=[str(tmp_path / "data" / "models" / FILENAME)])
    node = Node(settings, Paths.resolve())
    sock = bind_socket("127.0.0.1", 0)
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. the session's node

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(delay, stop.set)
        await serve(node, sock, stop)

    asyncio.run(run())
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("engine-")], 30,
             what="no engine thread left")
    wait_for(lambda: not {p.pid for p in psutil.Process().children(recursive=True)} - children_before, 30,
             what="no engine worker process left")
    assert all(m.engine is None for m in node.manager.models.values())

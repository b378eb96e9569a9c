"""Fixtures for the desktop app's tests: Qt offscreen, user state in temp folders (CLOSEDMESH_HOME,
XDG_CONFIG_HOME for start-at-login, an in-memory keyring), a controller running a real node with the
embedded model, and screenshots saved to tests/artifacts/."""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before any QApplication exists; no display needed

from pathlib import Path  # noqa: E402

import keyring  # noqa: E402
import keyring.backend  # noqa: E402
import keyring.errors  # noqa: E402
import pytest  # noqa: E402

from tests.conftest import seed_home  # noqa: E402
from tests.keyrings import MemoryKeyring, NoKeyring  # noqa: E402,F401 (NoKeyring: used by app tests)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
READY_TIMEOUT_MS = 120_000  # generous: a loaded 2-core machine can take a while to load the model


@pytest.fixture(autouse=True)
def memory_keyring():
    """No test touches the machine's real keyring."""
    previous = keyring.get_keyring()
    ring = MemoryKeyring()
    keyring.set_keyring(ring)
    yield ring
    keyring.set_keyring(previous)


@pytest.fixture(autouse=True)
def user_dirs(tmp_path, monkeypatch):
    """All user state in temp folders: ClosedMesh home, XDG autostart, the Hugging Face cache."""
    home = tmp_path / "home"
    monkeypatch.setenv("CLOSEDMESH_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return home


@pytest.fixture
def home(user_dirs, model_path) -> Path:
    """CLOSEDMESH_HOME holding the verified embedded model."""
    seed_home(user_dirs, model_path)
    return user_dirs


@pytest.fixture
def shot():
    """Save a widget (or a pixmap) as tests/artifacts/<name>.png and return the path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def save(what, name: str) -> Path:
        from PySide6.QtGui import QPixmap

        pm = what if isinstance(what, QPixmap) else what.grab()
        path = ARTIFACTS / f"{name}.png"
        assert pm.save(str(path)), f"could not save {path}"
        assert path.stat().st_size > 1000
        return path

    return save


def wait_ready(qtbot, controller, timeout: int = READY_TIMEOUT_MS) -> None:
    """Until the app is connected to its node and the node is ready."""
    from app.state import node_ready

    qtbot.waitUntil(lambda: controller.store.state.connected and node_ready(controller.store.state), timeout=timeout)


@pytest.fixture
def start_app(qtbot, qapp, tmp_path, user_dirs):
    """Start an AppController: a real node on a free port (or ``attach=(url, token)`` to a stand-in),
    no tray host (offscreen), URLs recorded instead of opened, start-at-login in a temp XDG folder.
    Every controller started is quit at the end of the test."""
    from app.autostart import XdgAutostart
    from app.controller import AppController
    from runtime.config import Paths, ServeSettings

    qapp.setQuitOnLastWindowClosed(False)
    made: list[AppController] = []

    def start(*, attach: tuple[str, str] | None = None, serve: ServeSettings | None = None, show: bool = True,
              port: int | None = 0, **kw) -> AppController:
        opened: list[str] = []
        c = AppController(Paths.resolve(), serve or ServeSettings(slots=2, ctx_per_slot=512, keepalive_seconds=1.0),
                          tray_available=False, open_url=lambda url: opened.append(url.toString()),
                          autostart=XdgAutostart(config_home=tmp_path / "xdg"),
                          autostart_command=["/opt/ClosedMesh/closedmesh-app", "--minimized"],
                          attach=attach, port_override=None if attach else port, **kw)
        c.opened = opened  # type: ignore[attr-defined]
        made.append(c)
        c.window.resize(1000, 700)
        c.start(show_window=show)
        return c

    yield start
    from PySide6.QtCore import QCoreApplication, QEvent

    for c in made:
        c.quit()
    # run the deferred deletes now, on this (the Qt) thread
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    qtbot.wait(1)

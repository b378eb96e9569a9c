"""Every page and the tray menu built with no node and no controller: a NodeStore fed with events
recorded from a real node joined to a real hub (``data/recorded-joined.json``: the ``/api/events``
stream the app received, then one ``/api/status`` poll, and the node's ``GET /api/models``), rendered
offscreen and saved as screenshots; and the views' requests going up as their own signals.

The recording was made with the fixtures of test_mesh_real_hub.py (``closedmesh hub``, a peer node
"peer" serving "peer-model", this node joined as "app-box" after one chat completion)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint

from app.actions import NodeActions
from app.autostart import XdgAutostart
from app.client import ApiResult
from app.links import Links
from app.mesh import MeshToggle
from app.pages.models import ModelsPage
from app.pages.overview import OverviewPage
from app.pages.peers import PeersPage
from app.pages.settings_page import SettingsPage
from app.pages.welcome import WelcomePage
from app.settings import AppSettings
from app.start_at_login import StartAtLogin
from app.store import NodeStore
from app.tray import Tray
from app.window import MainWindow

RECORDED = json.loads((Path(__file__).parent / "data" / "recorded-joined.json").read_text())
PORT = 9337  # the port the views are told the node serves on
SIZE = (1000, 700)


class RecordedActions(NodeActions):
    """NodeActions with no node: the model listing is the recorded answer; every other call answers
    "the node is not running" (NodeActions' own behaviour without a client)."""

    def list_models(self, on_done):
        on_done(ApiResult(200, RECORDED["models"]))


class Parts:
    """What the views are built from, as the controller would hand them over."""

    def __init__(self, tmp_path: Path) -> None:
        self.store = NodeStore()
        self.settings = AppSettings(port=PORT)
        self.actions = RecordedActions(self.store)
        self.opened: list[str] = []
        self.links = Links(lambda: PORT, lambda url: self.opened.append(url.toString()))
        self.toggle = MeshToggle(self.store, self.settings, self.actions)
        self.start_at_login = StartAtLogin(XdgAutostart(config_home=tmp_path / "xdg"), ["closedmesh-app"])

    def feed(self) -> None:
        """The stream opens, then the recorded events arrive in order."""
        self.store.set_connected(True)
        for name, data in RECORDED["events"]:
            self.store.feed(name, data)


@pytest.fixture
def parts(qapp, tmp_path) -> Parts:
    return Parts(tmp_path)


def shown(qtbot, widget):
    qtbot.addWidget(widget)
    widget.resize(*SIZE)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def test_overview_from_recorded_events(qtbot, parts, shot):
    page = shown(qtbot, OverviewPage(parts.store, parts.toggle, parts.links))
    assert page.fields["state"].text() == "Starting…"  # nothing heard yet
    parts.feed()
    assert page.headline.text() == "Joined · 1 peer · 2 models · CPU"
    assert page.fields["state"].text() == "Ready"
    assert page.fields["backend"].text() == "CPU · 2 threads · 2 cores"
    assert page.fields["mesh"].text().startswith("Joined · 1 live peer · nats://127.0.0.1:")
    assert page.api.text() == f"OpenAI API: http://localhost:{PORT}/v1"
    assert page.join.text() == "Leave the mesh" and page.join.isEnabled()
    assert page.models.item(0, 0).text() == "SmolLM2-135M-Instruct"
    assert page.models.item(0, 1).text() == "Loaded"
    assert page.models.item(0, 4).text() == "17.3 tok/s"
    shot(page, "view-overview-recorded")


def test_peers_from_recorded_events(qtbot, parts, shot):
    page = shown(qtbot, PeersPage(parts.store))
    assert page.table.isHidden() and "not in the mesh" in page.empty.text()
    parts.feed()
    assert page.table.rowCount() == 1
    row = [page.table.item(0, j).text() for j in range(page.table.columnCount())]
    assert row[0] == "peer (CPU)" and row[1] == "SmolLM2-135M-Instruct, peer-model" and row[5] == "Live", row
    assert page.summary.text().startswith("1 live peer · mesh nats://127.0.0.1:")
    shot(page, "view-peers-recorded")


def test_models_from_recorded_events(qtbot, parts, shot):
    page = shown(qtbot, ModelsPage(parts.store, parts.actions))
    parts.feed()
    qtbot.waitUntil(lambda: page.listing is not None, timeout=10_000)  # fetched once the node is connected
    assert page.empty.isHidden()
    assert page.rows[0].id == "SmolLM2-135M-Instruct" and page.rows[0].state_text == "Loaded"
    assert page.button("SmolLM2-135M-Instruct", "unload") is not None
    assert page.button("SmolLM2-135M-Instruct", "delete") is None  # served since the start: kept
    title = page.table.cellWidget(0, 0).text()
    assert "SmolLM2-135M-Instruct-Q4_1" in title
    recommended = [r for r in page.rows if r.recommended]
    assert [r.title for r in recommended] == ["Qwen3-4B-Q4_K_M"]
    assert page.button("Qwen3-4B-Q4_K_M", "download").text() == "Download"
    # an action with no node: the page says so in its banner
    page.button("Qwen3-4B-Q4_K_M", "download").click()
    assert page.banner.text() == "the node is not running"
    page.banner.clear()
    shot(page, "view-models-recorded")


def test_settings_from_recorded_events(qtbot, parts, shot):
    page = shown(qtbot, SettingsPage(parts.store, parts.actions, parts.links, parts.settings, parts.start_at_login,
                                     attached=False))
    parts.feed()
    assert page.mesh_now.text().startswith("Now: in the mesh at nats://127.0.0.1:")
    assert page.mesh_now.text().endswith("(private mesh) as “app-box”.")
    assert page.port.value() == PORT and page.port.isEnabled()
    assert {k: sb.value() for k, sb in page.limits.items()} == RECORDED["events"][-1][1]["mesh"]["limits"]
    assert not page.autostart.isChecked()
    shot(page, "view-settings-recorded")


def test_welcome_from_recorded_events(qtbot, parts, shot):
    models = ModelsPage(parts.store, parts.actions)
    page = shown(qtbot, WelcomePage(parts.store, parts.actions, parts.links))
    models.rows_changed.connect(page.show_recommendation)
    parts.feed()
    qtbot.waitUntil(lambda: page.recommended is not None, timeout=10_000)
    assert page.api.text() == f"http://localhost:{PORT}/v1"
    assert page.model_name.text() == "★ Qwen3-4B-Q4_K_M"
    assert page.download.text() == "Download" and page.download.isEnabled()
    shot(page, "view-welcome-recorded")
    models.deleteLater()


def test_tray_menu_from_recorded_events(qtbot, parts, shot):
    tray = Tray(parts.store, parts.toggle, parts.links, parts.start_at_login, available=False)
    assert tray.status_action.text() == "Starting…"
    parts.feed()
    assert tray.status_action.text() == "Joined · 1 peer · 2 models · CPU"
    assert tray.kind == "joined"
    assert tray.join_action.isChecked() and tray.join_action.text() == "Join the mesh"
    assert tray.chat_action.isEnabled()
    loaded = [a for a in tray.models_menu.actions() if a.isCheckable()]
    assert [(a.text(), a.isChecked()) for a in loaded] == [("SmolLM2-135M-Instruct", True)]
    tray.menu.popup(QPoint(40, 40))
    qtbot.waitUntil(tray.menu.isVisible)
    shot(tray.menu, "view-tray-menu-recorded")
    tray.menu.hide()
    tray.dispose()


def test_views_ask_upward_with_their_own_signals(qtbot, parts):
    """Clicks become the views' signals (the controller connects them); nothing else happens here."""
    parts.feed()
    window = shown(qtbot, MainWindow(parts.store, parts.toggle, parts.actions, parts.links, parts.settings,
                                     parts.start_at_login, attached=False))
    with qtbot.waitSignal(window.join_requested) as joined:
        window.overview.join.click()
    assert joined.args == [False]  # joined: the button leaves
    assert parts.toggle.phase == "joined"  # the view did not act on the toggle itself
    with qtbot.waitSignal(window.open_chat_requested):
        window.overview.chat.click()
    welcome = window.add_welcome()
    with qtbot.waitSignal(window.open_chat_requested):
        next(b for b in welcome.findChildren(type(welcome.got_it)) if b.text() == "Open Chat").click()
    assert parts.opened == []  # opening is the owner's decision
    page = window.settings
    page.port.setValue(PORT + 1)
    with qtbot.waitSignal(window.save_settings_requested), qtbot.waitSignal(window.restart_on_port_requested) as moved:
        page.save.click()
    assert moved.args == [PORT + 1] and parts.settings.port == PORT + 1
    with qtbot.waitSignal(window.quit_requested):
        window.close()  # no tray icon: closing the window asks to quit
    assert window.isVisible()

    tray = Tray(parts.store, parts.toggle, parts.links, parts.start_at_login, available=False)
    with qtbot.waitSignal(tray.join_requested) as joined:
        tray.join_action.trigger()
    assert joined.args == [False]
    with qtbot.waitSignal(tray.model_load_requested) as load:
        next(a for a in tray.models_menu.actions() if a.isCheckable()).trigger()
    assert load.args == ["SmolLM2-135M-Instruct", False]
    for action, signal, args in ((tray.chat_action, tray.open_chat_requested, []),
                                 (tray.window_action, tray.show_window_requested, [""]),
                                 (tray.quit_action, tray.quit_requested, [])):
        with qtbot.waitSignal(signal) as got:
            action.trigger()
        assert got.args == args
    tray.dispose()
    window.close_quits = False
    window.close()

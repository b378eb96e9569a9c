"""The app against a real node (the embedded model, in-process on a background thread): every tab and
the tray menu rendered and saved as screenshots, the tray's actions, the first-run welcome, settings,
a node without the mesh shown plainly, and a quit that leaves nothing running."""

from __future__ import annotations

import json
import threading

import httpx
import psutil
import pytest

from app.state import node_ready, tray_kind
from runtime.config import Paths

from .conftest import wait_ready


def status(c) -> dict:
    return httpx.get(f"http://127.0.0.1:{c.port}/api/status", timeout=10).json()


def models_listed(c) -> bool:
    return c.window.models.listing is not None and bool(c.window.models.rows)


def test_every_tab_and_the_tray_menu_with_a_real_node(qtbot, home, start_app, shot):
    c = start_app()
    wait_ready(qtbot, c)
    w = c.window
    qtbot.waitUntil(lambda: models_listed(c), timeout=30_000)
    # generate a little traffic so the overview has real tok/s and TTFT figures
    body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 12, "temperature": 0}
    r = httpx.post(f"http://127.0.0.1:{c.port}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200
    c.store.refresh()
    qtbot.waitUntil(lambda: ((c.store.state.status or {}).get("throughput", {}).get("SmolLM2-135M-Instruct", {})
                             .get("tokens_per_second_p50") is not None), timeout=10_000)

    # Welcome (first run)
    assert w.welcome is not None and w.tabs.currentWidget() is w.welcome
    qtbot.waitUntil(lambda: w.welcome.recommended is not None, timeout=10_000)
    shot(w, "window-welcome")

    # Overview
    w.show_tab("overview")
    qtbot.waitUntil(lambda: w.overview.models.rowCount() == 1, timeout=10_000)
    ov = w.overview
    assert ov.fields["state"].text() == "Ready"
    assert ov.fields["backend"].text().startswith("CPU")
    assert "RAM" in ov.fields["memory"].text()
    assert ov.models.item(0, 0).text() == "SmolLM2-135M-Instruct"
    assert ov.models.item(0, 4).text().endswith("tok/s")
    assert ov.api.text() == f"OpenAI API: http://localhost:{c.port}/v1"
    shot(w, "window-overview")

    # Peers: this node has no mesh yet — said plainly
    w.show_tab("peers")
    shot(w, "window-peers-no-mesh")

    # Models
    w.show_tab("models")
    rows = {r.id: r for r in w.models.rows}
    assert rows["SmolLM2-135M-Instruct"].state == "ready"
    assert any(r.recommended for r in w.models.rows)
    assert all(r.fit for r in w.models.rows if r.fit_kind is not None)
    shot(w, "window-models")

    # Settings
    w.show_tab("settings")
    shot(w, "window-settings")

    # Tray menu (rendered even without a tray host) and the Models submenu
    t = c.tray
    assert t.status_action.text() == "Solo · 1 model · CPU"
    assert t.kind == "solo" == tray_kind(c.store.state)
    t.menu.popup(w.geometry().topLeft())
    qtbot.waitUntil(t.menu.isVisible)
    shot(t.menu, "tray-menu")
    t.menu.hide()
    t.models_menu.popup(w.geometry().topLeft())
    qtbot.waitUntil(t.models_menu.isVisible)
    shot(t.models_menu, "tray-menu-models")
    t.models_menu.hide()
    texts = [a.text() for a in t.menu.actions() if a.text()]
    assert texts[1].startswith("Join the mesh")
    assert texts[:1] + texts[2:] == ["Solo · 1 model · CPU", "Models", "Open Chat", "Open ClosedMesh…",
                     "Start at login", "Quit ClosedMesh"]


def test_tray_actions(qtbot, home, start_app, tmp_path):
    c = start_app(show=False)
    wait_ready(qtbot, c)
    t = c.tray
    # Open Chat: the chat page of this node
    t.chat_action.trigger()
    assert c.opened == [f"http://localhost:{c.port}/"]
    # Open ClosedMesh…
    c.window.hide()
    t.window_action.trigger()
    assert c.window.isVisible()
    # Start at login: writes (and removes) the XDG autostart entry
    desktop = tmp_path / "xdg" / "autostart" / "closedmesh.desktop"
    t.autostart_action.trigger()
    assert t.autostart_action.isChecked() and desktop.is_file()
    assert "Exec=/opt/ClosedMesh/closedmesh-app --minimized" in desktop.read_text()
    assert c.window.settings.autostart.isChecked()
    t.autostart_action.trigger()
    assert not t.autostart_action.isChecked() and not desktop.exists()
    # Models submenu: unload, then load again, from the tray
    qtbot.waitUntil(lambda: len([a for a in t.models_menu.actions() if a.isCheckable()]) == 1, timeout=10_000)
    smol = [a for a in t.models_menu.actions() if a.isCheckable()][0]
    assert smol.text() == "SmolLM2-135M-Instruct" and smol.isChecked()
    smol.trigger()  # unchecks: unload

    def model_state() -> str:
        return c.store.state.status["models"][0]["state"]

    def menu_item():
        return [a for a in t.models_menu.actions() if a.isCheckable()][0]

    qtbot.waitUntil(lambda: model_state() == "on_disk", timeout=30_000)
    assert {m["id"]: m["state"] for m in status(c)["models"]}["SmolLM2-135M-Instruct"] == "on_disk"
    assert not menu_item().isChecked() and menu_item().isEnabled()
    menu_item().trigger()  # checks: load
    qtbot.waitUntil(lambda: model_state() == "ready", timeout=60_000)
    assert menu_item().isChecked() and menu_item().isEnabled()
    assert {m["id"]: m["state"] for m in status(c)["models"]}["SmolLM2-135M-Instruct"] == "ready"


def test_join_failures_against_the_real_node_are_said_plainly(qtbot, home, start_app):
    """The real node's mesh (no hub here: the join toggle against a real hub is tested with the hub):
    a bad invite turns the toggle back off with the node's message."""
    c = start_app()
    wait_ready(qtbot, c)
    assert c.store.state.mesh_supported and c.store.state.mesh["state"] == "off"
    for invite, words in (("cmi1.not-a-real-invite", "invite is damaged"),):
        c.window.banner.clear()
        c.settings.mesh_invite = invite
        c.tray.join_action.trigger()
        qtbot.waitUntil(lambda: c.window.banner.text().startswith("Could not join the mesh: "), timeout=60_000)
        assert words in c.window.banner.text(), c.window.banner.text()
        assert c.toggle.phase == "off"
        # the node's "off" event can arrive just after its answer: the toggle settles on it
        qtbot.waitUntil(lambda: c.store.state.mesh["state"] == "off", timeout=10_000)
        qtbot.waitUntil(lambda: not c.tray.join_action.isChecked()
                        and c.window.overview.join.text() == "Join the mesh", timeout=10_000)
        assert c.tray.kind == "solo"  # a failed attempt does not leave the node set to be in a mesh


def test_welcome_is_shown_once_and_downloads_the_recommended_model(qtbot, home, start_app):
    c = start_app()
    assert c.window.welcome is not None
    saved = json.loads((Paths.resolve().config / "app-settings.json").read_text())
    assert saved["welcome_shown"] is True
    wait_ready(qtbot, c)
    welcome = c.window.welcome
    qtbot.waitUntil(lambda: welcome.recommended is not None, timeout=30_000)
    text = welcome.findChildren(type(welcome.api))
    assert any("peers read the prompts they serve" in lbl.text() for lbl in text)
    assert welcome.model_name.text().startswith("★ ")
    assert welcome.download.isEnabled() == (welcome.recommended.state in ("available", "error"))
    welcome.got_it.click()
    assert c.window.welcome is None and c.window.tabs.currentWidget() is c.window.overview
    c.quit()
    # a second start: no welcome
    c2 = start_app()
    assert c2.window.welcome is None


def test_settings_are_saved(qtbot, home, start_app):
    c = start_app()
    wait_ready(qtbot, c)
    page = c.window.settings
    assert page.port.value() == c.port  # the port in use (the tests start on a free one)
    page.invite.setText(" nats://mesh.example:4222 ")
    page.mesh_name.setText("test laptop")
    page.limits["max_tokens"].setValue(1024)
    page.limits["max_concurrent"].setValue(3)
    page.limits["reserved_local_slots"].setValue(0)
    port = c.port
    page.save.click()
    saved = json.loads((Paths.resolve().config / "app-settings.json").read_text())
    assert (saved["mesh_invite"], saved["mesh_name"]) == ("nats://mesh.example:4222", "test laptop")
    assert c.settings.join_body() == {"invite": "nats://mesh.example:4222", "name": "test laptop"}
    assert c.port == port and c._restarting is None  # the port was not touched: no restart
    # the share limits went to the node, which keeps them
    qtbot.waitUntil(lambda: httpx.get(f"http://127.0.0.1:{c.port}/api/mesh", timeout=10).json()["limits"] ==
                    {"max_tokens": 1024, "max_concurrent": 3, "reserved_local_slots": 0}, timeout=10_000)
    assert page.banner.text() == "Settings saved."


def test_port_change_in_settings_restarts_the_node_there(qtbot, home, start_app):
    from app.runtime_host import next_free_port

    c = start_app()
    wait_ready(qtbot, c)
    old = c.port
    new = next_free_port("127.0.0.1", 20000)
    c.window.settings.port.setValue(new)
    c.window.settings.save.click()
    qtbot.waitUntil(lambda: c.port == new and c.store.state.connected and node_ready(c.store.state), timeout=60_000)
    assert httpx.get(f"http://127.0.0.1:{new}/health", timeout=10).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{old}/health", timeout=2)
    assert c.settings.port == new
    assert c.window.overview.api.text() == f"OpenAI API: http://localhost:{new}/v1"


def test_quit_leaves_no_thread_or_process_behind(qtbot, home, start_app):
    threads_before = set(threading.enumerate())
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    c = start_app()
    wait_ready(qtbot, c)
    port = c.port
    # a generation in flight while quitting: it is stopped, not waited for
    stream_done = threading.Event()
    seen: list[str] = []

    def stream():
        body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Count to a thousand"}],
                "max_tokens": 400, "stream": True}
        try:
            with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    seen.append(line)
        except httpx.HTTPError as e:
            seen.append(f"error {e}")
        stream_done.set()

    t = threading.Thread(target=stream)
    t.start()
    qtbot.waitUntil(lambda: len(seen) > 3, timeout=30_000)
    c.tray.quit_action.trigger()
    assert c.quitting and not c.window.isVisible()
    assert stream_done.wait(30)
    t.join(10)
    # the stream ended with an explicit error event, never silently
    assert any('"error"' in line for line in seen), seen[-3:]
    left = set(threading.enumerate()) - threads_before
    assert not left, f"threads left running: {left}"
    children = {p.pid for p in me.children(recursive=True)} - children_before
    assert not children, f"processes left running: {[psutil.Process(p).cmdline() for p in children]}"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_the_five_tray_icons_differ(qapp, shot):
    from app import icons
    from app.state import TRAY_KINDS

    images = {k: icons.pixmap(k, 22).toImage() for k in TRAY_KINDS}
    for a in TRAY_KINDS:
        for b in TRAY_KINDS:
            if a < b:
                assert images[a] != images[b], f"the {a} and {b} icons look the same"
    assert not icons.icon("solo").isNull() and len(icons.icon("solo").availableSizes()) == len(icons.SIZES)
    shot(icons.legend(), "tray-icons")

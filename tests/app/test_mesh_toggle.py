"""The "Join the mesh" toggle and the mesh views, against a stand-in node that implements the mesh's
HTTP contract (tests/app/fake_node.py): join with progress, join failure (toggle back off, the message
shown), no mesh chosen yet, leave, share limits, a dropped mesh, quitting while joined; and the
first-run welcome downloading the recommended model."""

from __future__ import annotations

import pytest

from .fake_node import FakeNode

INVITE = "cmi1.eyJ1cmxzIjpbIm5hdHM6Ly9odWIuZXhhbXBsZTo0MjIyIl19.sig"


@pytest.fixture
def fake():
    node = FakeNode().start()
    yield node
    node.close()


def attached(qtbot, start_app, fake: FakeNode, invite: str = INVITE):
    c = start_app(attach=(fake.base_url, fake.token))
    qtbot.waitUntil(lambda: c.store.state.connected and c.store.state.mesh_supported, timeout=30_000)
    if c.window.welcome is not None:
        c.window.close_welcome()
    c.settings.mesh_invite = invite
    return c


def test_join_shows_progress_then_joined_with_peers(qtbot, start_app, fake, shot):
    c = attached(qtbot, start_app, fake)
    assert c.tray.status_action.text() == "Solo · 1 model · CPU"
    fake.hold_joins()
    c.tray.join_action.trigger()
    # while the node connects: the toggle says so and cannot be clicked again
    qtbot.waitUntil(lambda: c.tray.join_action.text() == "Joining the mesh…", timeout=10_000)
    assert c.tray.join_action.isChecked() and not c.tray.join_action.isEnabled()
    assert c.window.overview.join.text() == "Joining the mesh…" and not c.window.overview.join.isEnabled()
    qtbot.waitUntil(lambda: c.tray.kind == "starting", timeout=10_000)  # connecting: the "starting" look
    c.tray.menu.popup(c.window.geometry().topLeft())
    qtbot.waitUntil(c.tray.menu.isVisible)
    shot(c.tray.menu, "tray-menu-joining")
    c.tray.menu.hide()
    fake.release_join()
    qtbot.waitUntil(lambda: c.toggle.phase == "joined", timeout=10_000)
    assert ("POST", "/api/mesh/join", {"invite": INVITE}) in fake.calls
    assert c.tray.join_action.isChecked() and c.tray.join_action.isEnabled()
    assert c.window.overview.join.text() == "Leave the mesh"
    qtbot.waitUntil(lambda: c.tray.status_action.text() == "Joined · 3 peers · 8 models · CPU", timeout=10_000)
    assert c.tray.kind == "joined"
    # Peers tab: the live table
    w = c.window
    w.show_tab("peers")
    qtbot.waitUntil(lambda: w.peers.table.rowCount() == 4, timeout=10_000)
    t = w.peers.table
    names = [t.item(i, 0).text() for i in range(4)]
    assert names == ["carol-server (CUDA)", "alice-desktop (CUDA)", "bob-macbook (Metal)", "dave-laptop (CPU)"]
    assert t.item(0, 1).text() == ("Qwen3-14B-Q4_K_M, Qwen3-8B-Q4_K_M, Mistral-7B-Instruct-v0.3-Q4_K_M, "
                                   "gemma-3-4b-it-Q4_K_M +1 more")
    assert [t.item(0, j).text() for j in range(2, 6)] == ["122.9 tok/s", "6", "9.3 ms", "Live"]
    assert t.item(3, 5).text() == "Not heard from lately"
    assert w.peers.summary.text() == "3 live peers (1 not heard from lately) · mesh nats://hub.example:4222"
    shot(w, "window-peers-joined")
    # live: a peer leaves
    fake.peers = fake.peers[:2]
    fake.push("peers", {"type": "peers", "peers": fake.peers})
    qtbot.waitUntil(lambda: t.rowCount() == 2, timeout=10_000)
    # serving peers: requests from peers running here
    fake.set_serving(2)
    qtbot.waitUntil(lambda: c.tray.kind == "serving", timeout=10_000)
    assert c.tray.status_action.text().startswith("Serving peers · 2 peers")
    w.show_tab("overview")
    assert "Joined · 2 live peers · nats://hub.example:4222" == w.overview.fields["mesh"].text()
    shot(w, "window-overview-serving-peers")
    c.tray.menu.popup(w.geometry().topLeft())
    qtbot.waitUntil(c.tray.menu.isVisible)
    shot(c.tray.menu, "tray-menu-joined")
    c.tray.menu.hide()
    # leave
    c.tray.join_action.trigger()
    qtbot.waitUntil(lambda: c.toggle.phase == "off" and not c.tray.join_action.isChecked(), timeout=10_000)
    assert ("POST", "/api/mesh/leave", {}) in fake.calls
    qtbot.waitUntil(lambda: c.tray.kind == "solo", timeout=10_000)


def test_join_failure_turns_the_toggle_back_off_with_the_message(qtbot, start_app, fake, shot):
    c = attached(qtbot, start_app, fake, invite="nats://hub.example:4222")
    c.settings.mesh_name = "my-laptop"
    fake.join_failure = (502, "could not reach nats://hub.example:4222 (connection refused)")
    c.window.overview.join.click()
    qtbot.waitUntil(lambda: c.toggle.phase == "off" and "connection refused" in c.window.banner.text(),
                    timeout=10_000)
    assert ("POST", "/api/mesh/join", {"invite": "nats://hub.example:4222", "name": "my-laptop"}) in fake.calls
    assert c.window.banner.text() == ("Could not join the mesh: could not reach nats://hub.example:4222 "
                                      "(connection refused)")
    assert not c.tray.join_action.isChecked() and c.tray.join_action.isEnabled()
    assert c.window.overview.join.text() == "Join the mesh"
    # the failed attempt does not leave a red icon behind: the node is not set to be in a mesh
    qtbot.waitUntil(lambda: c.tray.kind == "solo", timeout=10_000)
    qtbot.waitUntil(lambda: c.window.overview.fields["mesh"].text() == (
        "Not joined — could not reach nats://hub.example:4222 (connection refused)"), timeout=10_000)
    shot(c.window, "window-join-failed")


def test_a_failed_joins_events_arriving_after_its_answer_change_nothing(qtbot, start_app, fake):
    c = attached(qtbot, start_app, fake)
    fake.late_events = True
    fake.join_failure = (400, "this invite has expired; ask the hub's owner for a new one")
    c.tray.join_action.trigger()
    qtbot.waitUntil(lambda: c.toggle.phase == "off" and "expired" in c.window.banner.text(), timeout=10_000)
    # then the node's events of that attempt: connecting, error, off
    qtbot.waitUntil(lambda: (c.store.state.mesh or {}).get("error") == fake.join_failure[1] and
                    c.store.state.mesh["state"] == "off", timeout=10_000)
    assert c.toggle.phase == "off" and not c.tray.join_action.isChecked() and c.tray.join_action.isEnabled()
    assert c.window.banner.text() == ("Could not join the mesh: this invite has expired; ask the hub's owner for a "
                                      "new one")
    assert c.tray.kind == "solo"


def test_share_limits_from_settings_go_to_the_node(qtbot, start_app, fake):
    c = attached(qtbot, start_app, fake)
    page = c.window.settings
    qtbot.waitUntil(lambda: page.limits["max_tokens"].value() == 4096, timeout=10_000)  # the node's own limits
    page.save.click()
    assert not any(p == "/api/mesh/limits" for _, p, _ in fake.calls)  # unchanged: nothing sent
    page.limits["max_tokens"].setValue(1000)
    page.limits["max_concurrent"].setValue(5)
    page.limits["reserved_local_slots"].setValue(2)
    page.save.click()
    qtbot.waitUntil(lambda: any(p == "/api/mesh/limits" for _, p, _ in fake.calls), timeout=10_000)
    assert ("POST", "/api/mesh/limits", {"max_tokens": 1000, "max_concurrent": 5, "reserved_local_slots": 2}) \
        in fake.calls
    qtbot.waitUntil(lambda: (c.store.state.mesh or {}).get("limits", {}).get("max_concurrent") == 5, timeout=10_000)
    assert page.banner.text() == "Settings saved."


def test_joining_without_a_chosen_mesh_shows_where_to_choose_one(qtbot, start_app, fake):
    c = attached(qtbot, start_app, fake, invite="")
    c.tray.join_action.trigger()
    assert c.window.banner.text().startswith("Choose the mesh first")
    assert not c.tray.join_action.isChecked() and c.toggle.phase == "off"
    assert c.window.tabs.currentWidget() is c.window.settings
    assert not any(p == "/api/mesh/join" for _, p, _ in fake.calls)
    # chosen and saved in Settings: the next click joins with it
    c.window.settings.invite.setText("nats://open.example:4222")
    c.window.settings.save.click()
    c.tray.join_action.trigger()
    qtbot.waitUntil(lambda: c.toggle.phase == "joined", timeout=10_000)
    assert ("POST", "/api/mesh/join", {"invite": "nats://open.example:4222"}) in fake.calls
    qtbot.waitUntil(lambda: "in the mesh at nats://open.example:4222 as “test-box”" in
                    c.window.settings.mesh_now.text(), timeout=10_000)


def test_a_dropped_mesh_turns_the_toggle_off_and_says_why(qtbot, start_app, fake):
    c = attached(qtbot, start_app, fake)
    c.tray.join_action.trigger()
    qtbot.waitUntil(lambda: c.toggle.phase == "joined", timeout=10_000)
    fake.set_mesh(state="reconnecting")
    qtbot.waitUntil(lambda: c.tray.join_action.text() == "Join the mesh (reconnecting…)", timeout=10_000)
    assert c.tray.kind == "starting" and c.tray.join_action.isChecked()
    fake.set_mesh(state="error", error="the hub closed the connection (auth expired)")
    qtbot.waitUntil(lambda: c.toggle.phase == "off", timeout=10_000)
    assert "auth expired" in c.window.banner.text()
    assert c.tray.kind == "error"  # the node is set to be in the mesh and is not: red


def test_quitting_does_not_make_the_node_forget_the_mesh(qtbot, start_app, fake):
    """Quitting stops the node, whose shutdown leaves the mesh's directory but keeps the setting (it
    rejoins at the next start); a POST /api/mesh/leave would make it forget the mesh."""
    c = attached(qtbot, start_app, fake)
    c.tray.join_action.trigger()
    qtbot.waitUntil(lambda: c.toggle.phase == "joined", timeout=10_000)
    c.quit()
    assert not any(p == "/api/mesh/leave" for _, p, _ in fake.calls)


def test_the_welcome_downloads_the_recommended_model(qtbot, start_app, fake, shot):
    c = start_app(attach=(fake.base_url, fake.token))
    w = c.window.welcome
    assert w is not None
    qtbot.waitUntil(lambda: w.recommended is not None and w.download.isEnabled(), timeout=30_000)
    assert w.model_name.text() == "★ Qwen3-4B-Q4_K_M"
    assert w.model_info.text() == "2.5 GB · Runs on the CPU · 4.0B params · Q4_K_M · 40k context · apache-2.0"
    w.download.click()
    qtbot.waitUntil(lambda: w.progress.isVisible() and w.progress.value() == 250, timeout=10_000)
    assert ("POST", "/api/models/pull", {"model": "Qwen3-4B-Q4_K_M"}) in fake.calls
    assert w.progress_text.text() == "624 MB of 2.5 GB · 48.5 MB/s · 39 s left"
    assert w.download.text() == "Downloading…" and not w.download.isEnabled()
    shot(c.window, "window-welcome-downloading")


def test_an_invite_is_used_once_then_a_click_rejoins_the_saved_mesh(qtbot, start_app, fake):
    """Invites are single-use: after a join the app forgets it (settings file and field), and after a
    leave the next click sends no invite, so the node rejoins the mesh it keeps its membership of."""
    import json

    from runtime.config import Paths

    c = attached(qtbot, start_app, fake, invite="")
    page = c.window.settings
    page.invite.setText(INVITE)
    page.mesh_name.setText("my-laptop")
    page.save.click()
    c.tray.join_action.trigger()
    qtbot.waitUntil(lambda: c.toggle.phase == "joined", timeout=10_000)
    assert ("POST", "/api/mesh/join", {"invite": INVITE, "name": "my-laptop"}) in fake.calls
    assert c.settings.mesh_invite == "" and page.invite.text() == ""
    saved = json.loads((Paths.resolve().config / "app-settings.json").read_text())
    assert (saved["mesh_invite"], saved["mesh_name"]) == ("", "my-laptop")
    c.tray.join_action.trigger()  # leave
    qtbot.waitUntil(lambda: c.toggle.phase == "off", timeout=10_000)
    qtbot.waitUntil(lambda: "“Join the mesh” rejoins the mesh at nats://hub.example:4222" in page.mesh_now.text(),
                    timeout=10_000)
    page.save.click()  # saving the (now empty) field changes nothing
    c.tray.join_action.trigger()
    qtbot.waitUntil(lambda: c.toggle.phase == "joined", timeout=10_000)
    assert fake.calls[-1] == ("POST", "/api/mesh/join", {"name": "my-laptop"})
    assert "Could not" not in c.window.banner.text()
    # an open mesh's address is reusable: it stays in the settings
    c.tray.join_action.trigger()
    qtbot.waitUntil(lambda: c.toggle.phase == "off", timeout=10_000)
    page.invite.setText("nats://open.example:4222")
    page.save.click()
    c.tray.join_action.trigger()
    qtbot.waitUntil(lambda: c.toggle.phase == "joined", timeout=10_000)
    assert fake.calls[-1] == ("POST", "/api/mesh/join", {"invite": "nats://open.example:4222", "name": "my-laptop"})
    assert c.settings.mesh_invite == "nats://open.example:4222" and page.invite.text() == "nats://open.example:4222"

"""The "Join the mesh" toggle against a real local hub (`closedmesh hub`, embedded nats-server) and a real
peer node process serving "peer-model": the app's own node (in-process, on its background thread) joins
with an invite typed in Settings, shows the peer and its model, answers a chat completion for the
peer's model through the mesh, leaves, rejoins with one click and no new invite (the invite is
single-use and the node keeps its membership), and a spent invite fails with the hub's reason in plain
words. Quitting leaves no thread or process behind."""

from __future__ import annotations

import threading

import httpx
import openai
import psutil
import pytest

from tests.conftest import wait_for
from tests.mesh.conftest import join, mesh_status, peer_names, start_hub, start_mesh_node

from .conftest import wait_ready

pytestmark = pytest.mark.e2e

MESH_TIMEOUT_MS = 60_000  # a join goes through the hub's redeem, a config reload and a reconnect
SPENT_WORDS = ("already used", "does not accept this invite")


def peer_rows(c) -> list[list[str]]:
    t = c.window.peers.table
    return [[t.item(i, j).text() for j in range(t.columnCount())] for i in range(t.rowCount())]


def joined_with_peer(c) -> bool:
    return c.toggle.phase == "joined" and any(p.get("name") == "peer" for p in c.store.state.peers)


def test_the_join_toggle_against_a_real_hub(qtbot, home, start_app, tmp_path, model_path, shot):
    threads_before = set(threading.enumerate())
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    hub = start_hub(tmp_path / "mesh" / "hub")
    peer = None
    try:
        peer = start_mesh_node(tmp_path / "mesh", "peer", model_path, "peer-model")
        join(peer, hub.invite(), "peer")
        c = start_app()
        wait_ready(qtbot, c)
        w = c.window
        if w.welcome is not None:
            w.close_welcome()
        assert c.toggle.phase == "off" and not c.tray.join_action.isChecked()
        qtbot.waitUntil(lambda: c.tray.status_action.text() == "Solo · 1 model · CPU", timeout=10_000)

        # -- the invite, typed in Settings → Mesh and saved, as a user would ------------------------------
        invite = hub.invite()
        page = w.settings
        w.show_tab("settings")
        page.invite.setText(invite)
        page.mesh_name.setText("app-box")
        page.save.click()
        assert c.settings.mesh_invite == invite

        # -- join from the tray: "Joining the mesh…", then joined ------------------------------------------
        c.tray.join_action.trigger()
        assert c.tray.join_action.text() == "Joining the mesh…"  # at once, before the node answers
        assert c.tray.join_action.isChecked() and not c.tray.join_action.isEnabled()
        assert w.overview.join.text() == "Joining the mesh…" and not w.overview.join.isEnabled()
        qtbot.waitUntil(lambda: c.toggle.phase == "joined", timeout=MESH_TIMEOUT_MS)
        assert "Could not" not in w.banner.text()
        assert c.tray.join_action.isChecked() and c.tray.join_action.isEnabled()
        assert c.tray.join_action.text() == "Join the mesh"
        assert w.overview.join.text() == "Leave the mesh"
        # the invite is spent: the app no longer keeps it (nor shows it)
        assert c.settings.mesh_invite == "" and page.invite.text() == ""
        qtbot.waitUntil(lambda: f"Now: in the mesh at {hub.url} (private mesh) as “app-box”." ==
                        page.mesh_now.text(), timeout=10_000)
        wait_for(lambda: peer_names(peer) == {"app-box"}, 10, what="the peer to see the app's node")

        # the tray's status line counts the peer and its model
        qtbot.waitUntil(lambda: c.tray.status_action.text() == "Joined · 1 peer · 2 models · CPU",
                        timeout=MESH_TIMEOUT_MS)
        assert c.tray.kind == "joined"

        # the Peers tab lists the peer with its model
        w.show_tab("peers")
        qtbot.waitUntil(lambda: len(peer_rows(c)) == 1, timeout=10_000)
        row = peer_rows(c)[0]
        # (the peer also offers the default model it has on disk, which this node serves too)
        assert row[0] == "peer (CPU)" and "peer-model" in row[1].split(", ") and row[5] == "Live", row
        assert int(row[3]) >= 1  # free slots it offers the mesh
        assert w.peers.summary.text() == f"1 live peer · mesh {hub.url}"
        shot(w, "window-peers-real-hub")

        # the Overview: joined, the peer, the mesh's address; the models a request can name
        w.show_tab("overview")
        qtbot.waitUntil(lambda: w.overview.fields["mesh"].text() == f"Joined · 1 live peer · {hub.url}",
                        timeout=10_000)
        assert w.overview.headline.text() == "Joined · 1 peer · 2 models · CPU"
        shot(w, "window-overview-real-hub")
        # the chat page's model picker (GET /v1/models of the app's node) offers the peer's model
        models = {m["id"]: m.get("closedmesh") or {} for m in
                  httpx.get(f"http://127.0.0.1:{c.port}/v1/models", timeout=10).json()["data"]}
        assert models["peer-model"]["served_by"] == "mesh" and models["peer-model"]["peers"] == 1, models
        assert models["SmolLM2-135M-Instruct"]["served_by"] == "local+mesh"  # here, and on the peer too

        c.tray.menu.popup(w.geometry().topLeft())
        qtbot.waitUntil(c.tray.menu.isVisible)
        shot(c.tray.menu, "tray-menu-real-hub")
        c.tray.menu.hide()

        # -- a chat completion through the app's node for the peer's model: served by the peer -------------
        served_before = mesh_status(peer)["served_total"]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{c.port}/v1", api_key="unused", max_retries=0,
                               timeout=120)
        r = client.chat.completions.create(model="peer-model", messages=[{"role": "user", "content": "Say hello."}],
                                           max_tokens=8, temperature=0)
        assert r.model == "peer-model" and r.choices[0].message.content, r
        assert r.usage.completion_tokens > 0
        assert mesh_status(peer)["served_total"] == served_before + 1

        # -- leave with the toggle: the peer disappears, the toggle is off -------------------------------
        w.show_tab("peers")
        c.tray.join_action.trigger()
        assert c.tray.join_action.text() == "Leaving the mesh…"
        qtbot.waitUntil(lambda: c.toggle.phase == "off" and not c.tray.join_action.isChecked(),
                        timeout=MESH_TIMEOUT_MS)
        qtbot.waitUntil(lambda: not peer_rows(c) and w.peers.empty.isVisible(), timeout=10_000)
        assert w.peers.empty.text().startswith("You are not in the mesh.")
        qtbot.waitUntil(lambda: c.tray.status_action.text() == "Solo · 1 model · CPU", timeout=10_000)
        assert c.tray.kind == "solo" and w.overview.join.text() == "Join the mesh"
        wait_for(lambda: peer_names(peer) == set(), 10, what="the app's node to leave the peer's directory")
        # the node keeps its membership: Settings says a click rejoins it
        qtbot.waitUntil(lambda: f"“Join the mesh” rejoins the mesh at {hub.url}." in page.mesh_now.text(),
                        timeout=10_000)

        # -- one click rejoins, with no new invite (the overview's button this time) ---------------------
        w.overview.join.click()
        assert c.toggle.phase == "joining"
        qtbot.waitUntil(lambda: joined_with_peer(c), timeout=MESH_TIMEOUT_MS)
        assert "Could not" not in w.banner.text()
        qtbot.waitUntil(lambda: len(peer_rows(c)) == 1 and "peer-model" in peer_rows(c)[0][1], timeout=10_000)
        wait_for(lambda: peer_names(peer) == {"app-box"}, 10, what="the app's node back in the peer's directory")
        c.tray.join_action.trigger()  # and leave again
        qtbot.waitUntil(lambda: c.toggle.phase == "off" and not peer_rows(c), timeout=MESH_TIMEOUT_MS)

        # -- the spent invite, pasted again: the hub's reason in plain words, the toggle back off ---------
        page.invite.setText(invite)
        page.save.click()
        c.tray.join_action.trigger()
        qtbot.waitUntil(lambda: c.toggle.phase == "off" and w.banner.text().startswith("Could not join the mesh: "),
                        timeout=MESH_TIMEOUT_MS)
        message = w.banner.text()
        assert any(words in message for words in SPENT_WORDS), message
        assert "ask for a new one" in message
        # The node's own "off" event can arrive just after its answer; until then the toggle shows the node's
        # last state ("connecting": joining). It settles on off, clickable.
        qtbot.waitUntil(lambda: not c.tray.join_action.isChecked() and c.tray.join_action.isEnabled()
                        and w.overview.join.text() == "Join the mesh", timeout=10_000)
        qtbot.waitUntil(lambda: w.overview.fields["mesh"].text().startswith("Not joined — ") and
                        any(words in w.overview.fields["mesh"].text() for words in SPENT_WORDS), timeout=10_000)
        qtbot.waitUntil(lambda: c.tray.kind == "solo", timeout=10_000)  # not set to be in a mesh: not red
        assert c.settings.mesh_invite == invite  # a failed invite stays where the user put it
        w.show_tab("overview")
        shot(w, "window-join-failed-real-hub")
        # the last leave was awaited in the app; the peer learns of it through its own directory watch
        wait_for(lambda: peer_names(peer) == set(), 10, what="the app's node gone from the peer's directory")

        # the failed invite did not cost the membership: without it, one click rejoins
        page.invite.clear()
        page.save.click()
        w.banner.clear()
        c.tray.join_action.trigger()
        qtbot.waitUntil(lambda: joined_with_peer(c), timeout=MESH_TIMEOUT_MS)
        wait_for(lambda: peer_names(peer) == {"app-box"}, 10, what="the app's node back once more")

        # -- quit while joined: the node leaves the directory; nothing of the app is left running ----------
        c.tray.quit_action.trigger()
        assert c.quitting
        wait_for(lambda: peer_names(peer) == set(), 10, what="the quit app's node to leave the directory")
        assert httpx.get(f"{peer.base_url}/health", timeout=10).status_code == 200  # the peer is unaffected
    finally:
        if peer is not None:
            peer.stop()
        hub.stop()
    left = set(threading.enumerate()) - threads_before
    assert not left, f"threads left running: {left}"
    wait_for(lambda: not ({p.pid for p in me.children(recursive=True)} - children_before), 10,
             what="no process left running")

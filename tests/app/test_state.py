"""The app's pure logic: events folded into the state, the tray's icon and status line, formatting,
the Models tab's rows, the peers table, the mesh toggle's look, share limits shown."""

from __future__ import annotations

import pytest

from app.client import SSEParser, error_message
from app.mesh import ToggleView, phase_from_node, toggle_view
from app.model_rows import model_rows, recommended_row
from app.pages.peers import peer_cells, peers_summary
from app.pages.settings_page import limits_to_show, mesh_setting_words
from app.state import (NodeState, apply_event, apply_mesh, download_fraction, download_text, format_bytes,
                       format_duration, format_eta, format_ms, format_rate, format_tps, routable_model_count,
                       saved_mesh_urls, status_line, tooltip, tray_kind, wants_mesh)


def status_doc(models=None, ready=True, backend="cpu", in_flight=0, mesh=None, peers=None) -> dict:
    doc = {
        "node": {"id": "abc", "version": "0.1.0", "uptime_seconds": 5, "ready": ready},
        "capability": {"backend": backend, "devices": [], "ram_total_bytes": 16e9, "ram_free_bytes": 8e9,
                       "threads": 4, "physical_cores": 4},
        "models": models if models is not None else [{"id": "Smol", "state": "ready", "pinned": True}],
        "throughput": {},
        "requests": {"in_flight": in_flight, "queued": 0},
        "peers": peers or [],
    }
    if mesh is not None:
        doc["mesh"] = mesh
    return doc


def peer(name: str, models: list[str], state: str = "live", tps: float | None = 50.0) -> dict:
    return {"id": name + "-id", "name": name, "version": "0.1.0", "backend": "cuda",
            "models": [{"id": m, "context_length": 4096, "free_slots": 2, "queued": 0,
                        "tokens_per_second_p50": tps, "ttft_ms_p50": 80.0} for m in models],
            "free_slots": 2, "queued": 0, "tokens_per_second": tps, "latency_ms": 23.4, "state": state}


def connected(status: dict) -> NodeState:
    return apply_event(NodeState(connected=True), "status", status)


# -- folding events ---------------------------------------------------------------------------------------


def test_status_snapshot_then_model_events():
    s = connected(status_doc())
    assert s.mesh_supported is False  # no "mesh" in the status: a node without the mesh
    s = apply_event(s, "model_state", {"type": "model_state", "model": "Qwen3-4B", "state": "downloading"})
    assert [m["id"] for m in s.status["models"]] == ["Smol", "Qwen3-4B"]
    s = apply_event(s, "download_progress", {"type": "download_progress", "model": "Qwen3-4B", "state": "downloading",
                                             "done_bytes": 50, "total_bytes": 200, "rate_bps": 10.0,
                                             "eta_seconds": 15.0})
    assert s.downloads["qwen3-4b"]["done_bytes"] == 50
    s = apply_event(s, "model_state", {"model": "Qwen3-4B", "state": "on_disk", "error": None})
    assert "qwen3-4b" not in s.downloads  # progress is dropped once the download ended
    assert s.status["models"][1]["state"] == "on_disk"
    s = apply_event(s, "model_state", {"model": "qwen3-4b", "state": "error", "error": "disk full"})
    assert s.status["models"][1] == {"id": "Qwen3-4B", "state": "error", "error": "disk full"}
    s = apply_event(s, "model_state", {"model": "Qwen3-4B", "state": "deleted"})
    assert [m["id"] for m in s.status["models"]] == ["Smol"]


def test_events_never_mutate_the_previous_state():
    before = connected(status_doc())
    after = apply_event(before, "model_state", {"model": "Smol", "state": "unloading"})
    assert before.status["models"][0]["state"] == "ready" and after.status["models"][0]["state"] == "unloading"
    after = apply_event(before, "node_ready", {"type": "node_ready", "ready": False})
    assert before.status["node"]["ready"] is True and after.status["node"]["ready"] is False


def test_mesh_and_peers_events_and_unknown_ones():
    s = connected(status_doc(mesh={"state": "off", "url": None, "error": None}))
    assert s.mesh_supported is True and s.mesh["state"] == "off"
    s = apply_event(s, "mesh", {"type": "mesh", "state": "joined", "url": "nats://hub:4222", "error": None})
    assert s.mesh == {"state": "joined", "url": "nats://hub:4222", "error": None}
    s = apply_event(s, "peers", {"type": "peers", "peers": [peer("a", ["X"]), peer("b", ["Y"])]})
    assert [p["name"] for p in s.peers] == ["a", "b"]
    assert apply_event(s, "something_new", {"x": 1}) is s  # a newer node's events: ignored
    assert apply_event(s, "mesh", "not an object") is s
    s2 = apply_mesh(s, {"state": "joined", "url": "nats://hub:4222", "peers": [peer("c", ["Z"])]})
    assert [p["name"] for p in s2.peers] == ["c"] and "peers" not in s2.mesh


def test_status_before_the_first_snapshot_ignores_model_events():
    s = apply_event(NodeState(), "model_state", {"model": "X", "state": "ready"})
    assert s.status is None


# -- tray icon and status line ------------------------------------------------------------------------------


@pytest.mark.parametrize("state, kind", [
    (NodeState(), "starting"),
    (connected(status_doc(ready=False)), "starting"),
    (connected(status_doc()), "solo"),
    (connected(status_doc(mesh={"state": "connecting", "mode": "hub"})), "starting"),
    (connected(status_doc(mesh={"state": "joined", "mode": "hub", "serving_mesh_requests": 0})), "joined"),
    # requests in flight that are not from peers: still "joined"
    (connected(status_doc(mesh={"state": "joined", "mode": "hub", "serving_mesh_requests": 0}, in_flight=3)),
     "joined"),
    (connected(status_doc(mesh={"state": "joined", "mode": "open", "serving_mesh_requests": 2})), "serving"),
    # a node that does not count mesh requests apart: any request in flight counts
    (connected(status_doc(mesh={"state": "joined"}, in_flight=2)), "serving"),
    # set to be in the mesh and failing: red; a failed attempt while not set to be in one: not red
    (connected(status_doc(mesh={"state": "error", "mode": "hub", "error": "hub gone"})), "error"),
    (connected(status_doc(mesh={"state": "error", "mode": None, "error": "hub gone"})), "solo"),
    (connected(status_doc(mesh={"state": "off", "mode": None, "error": "connection refused"})), "solo"),
    (connected(status_doc(models=[{"id": "Smol", "state": "error", "pinned": True, "error": "bad file"}])), "error"),
    (NodeState(start_error="port 9337 is in use"), "error"),
])
def test_tray_kind(state, kind):
    assert tray_kind(state) == kind


def test_wants_mesh():
    assert not wants_mesh(NodeState())
    assert wants_mesh(connected(status_doc(mesh={"state": "reconnecting", "mode": "hub"})))
    assert not wants_mesh(connected(status_doc(mesh={"state": "off", "mode": None})))
    assert wants_mesh(connected(status_doc(mesh={"state": "joined"})))  # no "mode": from the state


def test_status_line_examples():
    peers = [peer(f"p{i}", [f"M{i}", "Shared"]) for i in range(12)] + [peer("old", ["Gone"], state="stale")]
    models = [{"id": f"L{i}", "state": "on_disk"} for i in range(3)] + [{"id": "Smol", "state": "ready"}]
    s = connected(status_doc(models=models, backend="cuda", mesh={"state": "joined", "serving_mesh_requests": 0},
                             peers=peers))
    # 4 local + 12 distinct peer models + "Shared" (the stale peer's model does not count)
    assert routable_model_count(s) == 17
    assert status_line(s) == "Joined · 12 peers · 17 models · CUDA"
    assert status_line(connected(status_doc())) == "Solo · 1 model · CPU"
    assert status_line(connected(status_doc(mesh={"state": "reconnecting"}))) == "Reconnecting… · 1 model · CPU"
    assert status_line(connected(status_doc(mesh={"state": "joined", "serving_mesh_requests": 1}))).startswith(
        "Serving peers · 0 peers")
    assert status_line(NodeState()) == "Starting…"
    assert status_line(connected(status_doc(ready=False))) == "Starting… (loading models)"
    assert status_line(NodeState(start_error="port 9337 is in use")) == "Error: port 9337 is in use"
    assert tooltip(connected(status_doc(backend="metal")), 9337) == ("ClosedMesh — Solo · 1 model · Metal\n"
                                                                    "http://localhost:9337/v1")


# -- formatting ---------------------------------------------------------------------------------------------


def test_formatting():
    assert format_bytes(None) == "—"
    assert format_bytes(512) == "512 B"
    assert format_bytes(98_304_000) == "98.3 MB"
    assert format_bytes(4_683_000_000) == "4.7 GB"
    assert format_bytes(150_000_000) == "150 MB"
    assert format_rate(12_500_000) == "12.5 MB/s"
    assert format_rate(0) == format_rate(None) == "—"
    assert format_duration(45) == "45 s"
    assert format_duration(200) == "3 min 20 s"
    assert format_duration(1500) == "25 min"
    assert format_duration(7500) == "2 h 5 min"
    assert format_duration(None) == "—"
    assert format_eta(None) == "time left unknown"
    assert format_eta(0.4) == "almost done"
    assert format_eta(65) == "1 min 5 s left"
    assert format_tps(None) == "—" and format_tps(99.06) == "99.1 tok/s"
    assert format_ms(152.4) == "152 ms" and format_ms(3.25) == "3.2 ms" and format_ms(None) == "—"


def test_download_progress_words():
    p = {"state": "downloading", "done_bytes": 48_000_000, "total_bytes": 98_000_000, "rate_bps": 12_500_000,
         "eta_seconds": 4.0}
    assert download_fraction(p) == pytest.approx(48 / 98)
    assert download_text(p) == "48.0 MB of 98.0 MB · 12.5 MB/s · 4 s left"
    assert download_fraction({"done_bytes": 5, "total_bytes": None}) is None
    assert download_text({"state": "downloading", "done_bytes": 5_000_000, "total_bytes": None, "rate_bps": 0,
                          "eta_seconds": None}) == "5.0 MB · — · time left unknown"
    assert download_text({"state": "verifying"}) == "Checking the file…"
    assert download_text({"state": "queued"}).startswith("Waiting")
    assert download_text(None) == ""


# -- Models tab rows -------------------------------------------------------------------------------------------


def listing() -> dict:
    def entry(id_, state="available", recommended=False, local=None, kind="cpu"):
        return {"id": id_, "family": id_.rsplit("-", 1)[0], "repo": "r", "file": "f", "quant": "Q4_K_M",
                "size_bytes": 2_500_000_000, "size_is_estimate": False, "parameters": 4_000_000_000,
                "context_length": 40960, "license": "apache-2.0", "recommended": recommended, "state": state,
                "local": local, "fit": {"kind": kind, "label": "Runs on the CPU" if kind == "cpu" else "Too large"}}

    return {"catalog": [entry("Big-Q4_K_M", kind="too_large"),
                        entry("Qwen3-4B-Q4_K_M", recommended=True),
                        entry("Smol-Q4_1", state="ready", local={"id": "Smol", "state": "ready", "pinned": True}),
                        entry("Mid-Q4_K_M", state="on_disk", local={"id": "Mid-Q4_K_M", "state": "on_disk"})],
            "local": [{"id": "my-file", "state": "on_disk", "size_bytes": 1000, "source": "https://x/y.gguf"}],
            "recommended": "Qwen3-4B-Q4_K_M"}


def test_model_rows_order_actions_and_live_state():
    s = connected(status_doc(models=[{"id": "Smol", "state": "ready", "pinned": True},
                                     {"id": "Mid-Q4_K_M", "state": "on_disk"}, {"id": "my-file", "state": "on_disk"}]))
    rows = model_rows(listing(), s)
    assert [r.id for r in rows] == ["Smol", "Mid-Q4_K_M", "my-file", "Qwen3-4B-Q4_K_M", "Big-Q4_K_M"]
    by = {r.id: r for r in rows}
    assert by["Smol"].actions == ("unload",)  # pinned: never deleted from under the node
    assert by["Mid-Q4_K_M"].actions == ("load", "delete")
    assert by["Qwen3-4B-Q4_K_M"].actions == ("download",) and by["Qwen3-4B-Q4_K_M"].recommended
    assert by["Big-Q4_K_M"].fit_kind == "too_large"
    assert by["Qwen3-4B-Q4_K_M"].detail == "4.0B params · Q4_K_M · 40k context · apache-2.0"
    assert by["Qwen3-4B-Q4_K_M"].size == "2.5 GB"
    assert recommended_row(rows).id == "Qwen3-4B-Q4_K_M"
    # a pull started since the listing: the events' state and progress win
    s = apply_event(s, "model_state", {"model": "Qwen3-4B-Q4_K_M", "state": "downloading"})
    row = {r.id: r for r in model_rows(listing(), s)}["Qwen3-4B-Q4_K_M"]
    assert row.actions == ("cancel",) and row.progress is None and row.progress_text.startswith("Waiting")
    s = apply_event(s, "download_progress", {"model": "Qwen3-4B-Q4_K_M", "state": "downloading", "done_bytes": 25,
                                             "total_bytes": 100, "rate_bps": 5.0, "eta_seconds": 15})
    row = {r.id: r for r in model_rows(listing(), s)}["Qwen3-4B-Q4_K_M"]
    assert row.progress == 0.25 and row.progress_text == "25 B of 100 B · 5 B/s · 15 s left"
    # a typed URL pulled since the listing: shown at once
    s = apply_event(s, "model_state", {"model": "new-one", "state": "downloading"})
    assert "new-one" in [r.id for r in model_rows(listing(), s)]
    s = apply_event(s, "model_state", {"model": "Mid-Q4_K_M", "state": "error", "error": "corrupt"})
    row = {r.id: r for r in model_rows(listing(), s)}["Mid-Q4_K_M"]
    assert row.actions == ("download",) and row.error == "corrupt"
    assert model_rows(None, s) == []


def test_model_rows_of_a_model_whose_engine_crashed():
    """Restarting after a crash: said so, no action; given up after repeated crashes: loading it again is
    offered (its file is on this machine), not a download."""
    s = connected(status_doc(models=[{"id": "Mid-Q4_K_M", "state": "restarting", "file": "/m/mid.gguf"}]))
    row = {r.id: r for r in model_rows(listing(), s)}["Mid-Q4_K_M"]
    assert row.actions == () and row.state_text == "Restarting after a crash…"
    s = apply_event(s, "model_state", {"model": "Mid-Q4_K_M", "state": "error",
                                       "error": "its engine crashed 4 times within 60 s"})
    row = {r.id: r for r in model_rows(listing(), s)}["Mid-Q4_K_M"]
    assert row.actions == ("load", "delete") and "crashed" in row.error


# -- peers, toggle, limits -------------------------------------------------------------------------------------


def test_peer_cells_and_summary():
    p = peer("alice", ["A", "B", "C", "D", "E"])
    assert peer_cells(p) == ["alice (CUDA)", "A, B, C, D +1 more", "50.0 tok/s", "2", "23 ms", "Live"]
    assert peer_cells({"id": "0123456789abcdef0", "state": "stale", "models": []}) == [
        "0123456789ab", "—", "—", "—", "—", "Not heard from lately"]
    assert "no mesh support" in peers_summary(connected(status_doc()))
    assert "not in the mesh" in peers_summary(connected(status_doc(mesh={"state": "off"})))
    s = connected(status_doc(mesh={"state": "joined", "url": "nats://hub:4222"},
                             peers=[peer("a", ["X"]), peer("b", ["Y"], state="stale")]))
    assert peers_summary(s) == "1 live peer (1 not heard from lately) · mesh nats://hub:4222"
    assert "hub gone" in peers_summary(connected(status_doc(mesh={"state": "error", "error": "hub gone"})))


def test_toggle_view():
    assert toggle_view("off", "off", True) == ToggleView(False, True, "Join the mesh")
    assert toggle_view("off", "off", False).text == "Join the mesh (not available)"
    assert toggle_view("joining", "connecting", True) == ToggleView(True, False, "Joining the mesh…")
    assert toggle_view("joined", "joined", True) == ToggleView(True, True, "Join the mesh")
    assert toggle_view("joined", "reconnecting", True).text == "Join the mesh (reconnecting…)"
    assert toggle_view("leaving", "joined", True) == ToggleView(False, False, "Leaving the mesh…")
    assert toggle_view("off", "connecting", True) == ToggleView(True, False, "Joining the mesh…")
    assert [phase_from_node(x) for x in ("off", "connecting", "joined", "reconnecting", "error")] == [
        "off", None, "joined", "joined", "off"]


def test_limits_shown():
    assert limits_to_show(None) == {"max_tokens": 2048, "max_concurrent": 4, "reserved_local_slots": 1}
    node = {"max_tokens": 4096, "max_concurrent": 2, "reserved_local_slots": 0}
    assert limits_to_show(node) == node
    assert limits_to_show({"max_tokens": 100, "max_concurrent": True}) == {"max_tokens": 100, "max_concurrent": 4,
                                                                          "reserved_local_slots": 1}


def test_saved_mesh_urls():
    assert saved_mesh_urls(connected(status_doc())) == []  # a node without the mesh
    assert saved_mesh_urls(connected(status_doc(mesh={"state": "off", "mode": None, "urls": []}))) == []
    left = connected(status_doc(mesh={"state": "off", "mode": None, "urls": ["nats://a:4222", 5, ""]}))
    assert saved_mesh_urls(left) == ["nats://a:4222"]  # kept after a leave: a join without an invite rejoins
    assert saved_mesh_urls(connected(status_doc(mesh={"state": "off", "urls": "nats://a:4222"}))) == []


def test_mesh_setting_words():
    assert mesh_setting_words(connected(status_doc())) == "This version of the node cannot join a mesh yet."
    s = connected(status_doc(mesh={"state": "off", "mode": None, "urls": ["nats://a:4222"],
                                   "node": {"name": "box"}}))
    assert mesh_setting_words(s) == ("Now: not in a mesh as “box”. With no invite above, “Join the mesh” rejoins "
                                     "the mesh at nats://a:4222.")
    s = connected(status_doc(mesh={"state": "off", "mode": None, "urls": [], "node": {"name": "box"}}))
    assert mesh_setting_words(s) == "Now: not in a mesh as “box”."
    s = connected(status_doc(mesh={"state": "reconnecting", "mode": "hub", "urls": ["nats://a:4222", "nats://b:4222"],
                                   "node": {"name": "box"}}))
    assert mesh_setting_words(s) == "Now: in the mesh at nats://a:4222, nats://b:4222 (private mesh) as “box”."


# -- the client's wire helpers ---------------------------------------------------------------------------


def test_sse_parser():
    p = SSEParser()
    lines = ["event: status", 'data: {"a": 1}', "", ": keep-alive", "", "data: x", "data: y", "", "event: mesh",
             "data:{}", ""]
    got = [e for line in lines if (e := p.feed(line)) is not None]
    assert got == [("status", '{"a": 1}'), ("message", "x\ny"), ("mesh", "{}")]


def test_error_message():
    body = {"error": {"message": "Unknown route: POST /api/mesh/join", "code": "not_found"}}
    assert error_message(404, body) == ("Unknown route: POST /api/mesh/join", "not_found")
    assert error_message(502, "Bad gateway") == ("the node answered HTTP 502", None)

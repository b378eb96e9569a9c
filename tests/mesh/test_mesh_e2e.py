"""The mesh end to end: a real hub (embedded nats-server) and real nodes, each its own process with its
own home folder and port, serving the real model. Models are told apart by id (the same GGUF linked
under several names), so routing by model is observable."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import httpx
import openai
import pytest

from ..conftest import wait_for
from .conftest import api, join, mesh_status, peer_names, start_hub, start_mesh_node

pytestmark = pytest.mark.e2e

EOS_BAN = {"0": -100, "2": -100, "4": -100}


@pytest.fixture(scope="module")
def mesh3(tmp_path_factory, model_path):
    """hub + A (alpha) + B (beta, shared) + C (gamma, shared), all joined."""
    tmp = tmp_path_factory.mktemp("mesh3")
    hub = start_hub(tmp / "hub")
    nodes = {}
    try:
        nodes["a"] = start_mesh_node(tmp, "a", model_path, "alpha")
        nodes["b"] = start_mesh_node(tmp, "b", model_path, "beta", "shared")
        nodes["c"] = start_mesh_node(tmp, "c", model_path, "gamma", "shared")
        for name, n in nodes.items():
            join(n, hub.invite(), f"node-{name}")
        wait_for(lambda: all(len(mesh_status(n)["peers"]) == 2 for n in nodes.values()), 10, what="full directory")
        yield hub, nodes
    finally:
        for n in nodes.values():
            n.stop()
        hub.stop()


def _served(node) -> int:
    return mesh_status(node)["served_total"]


def _client(node) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.v1, api_key="unused", max_retries=0, timeout=120)


def test_models_and_peers_visible(mesh3):
    _, n = mesh3
    models = {m["id"]: m["closedmesh"] for m in _client(n["a"]).models.list().model_dump()["data"]}
    assert models["alpha"]["served_by"] == "local" and models["alpha"]["peers"] == 0
    assert models["beta"]["served_by"] == "mesh" and models["beta"]["peers"] == 1
    assert models["shared"]["served_by"] == "mesh" and models["shared"]["peers"] == 2
    st = api(n["a"], "GET", "/api/status", admin=False)[1]
    assert st["mesh"]["state"] == "joined"
    assert {p["name"] for p in st["peers"]} == {"node-b", "node-c"}
    b = next(p for p in st["peers"] if p["name"] == "node-b")
    assert {m["id"] for m in b["models"]} >= {"beta", "shared"} and b["state"] == "live"
    assert b["free_slots"] >= 1 and b["backend"] == "cpu"


def test_routing_by_model(mesh3):
    _, n = mesh3
    before = {k: _served(v) for k, v in n.items()}
    c = _client(n["a"])
    r = c.chat.completions.create(model="beta", messages=[{"role": "user", "content": "Say hello."}], max_tokens=12)
    assert r.model == "beta" and r.choices[0].message.content
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 5
    r = c.completions.create(model="gamma", prompt="The sky is", max_tokens=8)
    assert r.model == "gamma" and r.choices[0].text
    after = {k: _served(v) for k, v in n.items()}
    assert after["b"] == before["b"] + 1 and after["c"] == before["c"] + 1 and after["a"] == before["a"]
    # served requests feed the throughput that the peer announces
    wait_for(lambda: next(m for p in mesh_status(n["a"])["peers"] if p["name"] == "node-b" for m in p["models"]
                          if m["id"] == "beta")["tokens_per_second_p50"], 10, what="b's measured tok/s announced")
    # a model that only this node serves stays here
    r = c.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert r.model == "alpha"
    assert {k: _served(v) for k, v in n.items()} == after


def test_streaming_through_the_mesh_with_usage(mesh3):
    _, n = mesh3
    stream = _client(n["a"]).chat.completions.create(
        model="beta", messages=[{"role": "user", "content": "Count from 1 to 10."}], max_tokens=30, stream=True,
        stream_options={"include_usage": True}, temperature=0)
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 30
    assert any(ch.choices and ch.choices[0].finish_reason for ch in chunks)


def test_load_spreads_across_peers(mesh3):
    _, n = mesh3
    before = {k: _served(n[k]) for k in ("b", "c")}
    c = _client(n["a"])
    errors = []

    def one(i: int) -> None:
        try:
            c.chat.completions.create(model="shared", messages=[{"role": "user", "content": f"Say the number {i}."}],
                                      max_tokens=24, temperature=0, logit_bias=EOS_BAN)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    gained = {k: _served(n[k]) - before[k] for k in ("b", "c")}
    assert sum(gained.values()) == 6
    assert gained["b"] >= 1 and gained["c"] >= 1, gained


def test_unknown_model_lists_mesh_models(mesh3):
    _, n = mesh3
    with pytest.raises(openai.NotFoundError) as e:
        _client(n["a"]).chat.completions.create(model="nowhere", messages=[{"role": "user", "content": "x"}])
    assert "beta" in str(e.value) and "shared" in str(e.value)


def test_bad_request_is_refused_before_the_mesh(mesh3):
    _, n = mesh3
    with pytest.raises(openai.BadRequestError):
        _client(n["a"]).chat.completions.create(model="beta", messages=[{"role": "user", "content": "x"}],
                                                temperature=5)


def test_client_disconnect_cancels_work_on_the_peer(mesh3):
    _, n = mesh3
    body = {"model": "beta", "messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 900,
            "stream": True, "temperature": 0, "logit_bias": EOS_BAN}
    with httpx.Client(timeout=60) as h:
        with h.stream("POST", n["a"].v1 + "/chat/completions", json=body) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    seen += 1
                if seen >= 5:
                    # checked before leaving the loop: breaking out of iter_lines closes the stream, which
                    # is the disconnect under test
                    assert mesh_status(n["b"])["serving_mesh_requests"] == 1
                    break
    # The client went away: the peer stops generating (not 900 tokens later).
    wait_for(lambda: mesh_status(n["b"])["serving_mesh_requests"] == 0, 10, what="the peer to stop")
    st = api(n["b"], "GET", "/api/status", admin=False)[1]
    assert st["requests"]["in_flight"] == 0


def test_events_show_a_joining_and_leaving_peer(mesh3, tmp_path, model_path):
    hub, n = mesh3
    events: list[dict] = []
    stop = threading.Event()

    def listen() -> None:
        with urllib.request.urlopen(n["a"].base_url + "/api/events", timeout=60) as r:
            ev = None
            for raw in r:
                if stop.is_set():
                    return
                line = raw.decode().strip()
                if line.startswith("event: "):
                    ev = line[7:]
                elif line.startswith("data: ") and ev == "peers":
                    events.append({"t": time.monotonic(), "names": {p["name"] for p in json.loads(line[6:])["peers"]}})

    threading.Thread(target=listen, daemon=True).start()
    d = start_mesh_node(tmp_path, "d", model_path, "delta")
    try:
        join(d, hub.invite(), "node-d")
        t0 = time.monotonic()  # the join has completed (its own admission and connect are not timed here)
        wait_for(lambda: any("node-d" in e["names"] for e in events), 10, what="a peers event with node-d")
        seen = next(e["t"] for e in events if "node-d" in e["names"])
        assert seen - t0 < 2.0 + 1.0, f"node-d reached a's event stream {seen - t0:.2f}s after its join"
        # every other node learns it through its own directory watch, each in its own time
        wait_for(lambda: "node-d" in peer_names(n["b"]), 10, what="node-d in b's directory")
        code, body = api(d, "POST", "/api/mesh/leave", {})
        assert code == 200 and body["state"] == "off"
        t1 = time.monotonic()  # the leave has answered: d's entry is withdrawn
        wait_for(lambda: events and "node-d" not in events[-1]["names"], 10, what="node-d gone from events")
        assert time.monotonic() - t1 < 2.0 + 1.0, f"node-d left a's event stream {time.monotonic() - t1:.2f}s after its leave"
        wait_for(lambda: "node-d" not in peer_names(n["c"]), 10, what="node-d gone from c's directory")
    finally:
        stop.set()
        d.stop()


def test_share_limits_are_announced_and_enforced(mesh3):
    _, n = mesh3
    code, st = api(n["b"], "POST", "/api/mesh/limits", {"max_tokens": 8})
    assert code == 200 and st["limits"]["max_tokens"] == 8
    try:
        wait_for(lambda: next(p for p in mesh_status(n["a"])["peers"] if p["name"] == "node-b")["limits"]["max_tokens"]
                 == 8, 10, what="the new limit in a's directory")
        c = _client(n["a"])
        # no max_tokens: the peer's cap applies
        r = c.chat.completions.create(model="beta", messages=[{"role": "user", "content": "Tell a story."}],
                                      logit_bias=EOS_BAN)
        assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="beta", messages=[{"role": "user", "content": "x"}], max_tokens=100)
        assert "at most 8 tokens" in str(e.value)
        code, body = api(n["b"], "POST", "/api/mesh/limits", {"max_tokens": 0})
        assert code == 400 and "max_tokens" in body["error"]["message"]
        code, body = api(n["b"], "POST", "/api/mesh/limits", {"max_tokens": 50}, admin=False)
        assert code == 401
        assert json.loads((n["b"].home / "config" / "mesh.json").read_text())["limits"]["max_tokens"] == 8
    finally:
        api(n["b"], "POST", "/api/mesh/limits", {"max_tokens": 2048})


def test_cli_mesh_status(mesh3):
    import os
    import subprocess

    from ..conftest import CLOSEDMESH
    _, n = mesh3
    a = n["a"]
    r = subprocess.run([str(CLOSEDMESH), "mesh", "status", "--port", str(a.port)], capture_output=True, text=True,
                       env=dict(os.environ, CLOSEDMESH_HOME=str(a.home)), timeout=30)
    assert r.returncode == 0, r.stderr
    assert "mesh: joined" in r.stdout and "node-b" in r.stdout and "node-c" in r.stdout and "2 peers" in r.stdout
    r = subprocess.run([str(CLOSEDMESH), "status", "--port", str(a.port)], capture_output=True, text=True,
                       env=dict(os.environ, CLOSEDMESH_HOME=str(a.home)), timeout=30)
    assert r.returncode == 0 and "mesh joined via nats://127.0.0.1:" in r.stdout and "2 peers" in r.stdout, r.stdout


def test_serve_with_embedded_hub(tmp_path, model_path):
    from .conftest import free_port
    hub_port = free_port()
    host = start_mesh_node(tmp_path, "host", model_path, "hosted",
                           extra=("--hub", "--hub-host", "127.0.0.1", "--hub-port", str(hub_port)))
    guest = start_mesh_node(tmp_path, "guest", model_path, "guest-model")
    try:
        wait_for(lambda: mesh_status(host)["state"] == "joined", 20, what="the host node on its own hub")
        assert mesh_status(host)["hub"]["urls"] == [f"nats://127.0.0.1:{hub_port}"]
        code, inv = api(host, "POST", "/api/mesh/invite", {"ttl_seconds": 600})
        assert code == 200 and inv["invite"].startswith("cmi1.")
        join(guest, inv["invite"], "guest")
        host_id = mesh_status(host)["node"]["id"]
        wait_for(lambda: peer_names(host) == {"guest"} and [p["id"] for p in mesh_status(guest)["peers"]] == [host_id],
                 10, what="host and guest see each other")
        r = _client(guest).chat.completions.create(model="hosted", messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=4)
        assert r.model == "hosted"
        code, body = api(guest, "POST", "/api/mesh/invite", {})
        assert code == 409 and "--hub" in body["error"]["message"]
    finally:
        guest.stop()
        assert host.stop() == 0
    # the embedded nats-server went away with its node
    pid = int((host.home / "data" / "hub" / "nats-server.pid").read_text()) if (
        host.home / "data" / "hub" / "nats-server.pid").exists() else None
    if pid is not None:
        import psutil
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

"""The throughput catalog across a real mesh (a real hub, real nodes, the real model) and the open status
document an entry node serves instead of its full status: what the mesh can route, with counts and
figures, and nothing that names a machine (docs/entry.md, "Open model list" and "Status catalog")."""

from __future__ import annotations

import json
import socket
import stat
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

import tests.conftest as root_conftest
from runtime import __version__

from ..conftest import wait_for
from ..e2e.test_cli import run_cli
from .conftest import api, join, start_mesh_node

pytestmark = pytest.mark.e2e

# A peer name that looks like what a name defaults to (the machine's host name).
PEER_NAME = "alice-macbook-pro.local"
ENTRY_NAME = "entry-box.example.lan"


def _entry_launcher(tmp: Path) -> Path:
    """`closedmesh serve` with ``ServeSettings.entry`` on: a test fixture standing in for the entry
    command (runtime/entry), so that this test needs nothing but the setting."""
    script = tmp / "closedmesh-entry"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "import runtime.cli as cli\n"
        "_settings = cli.ServeSettings\n"
        "cli.ServeSettings = lambda **kw: _settings(entry=True, **kw)\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def entry_mesh(tmp_path, model_path, hub, monkeypatch):
    """A peer serving "beta" under a host-name-like name, and an entry node that serves nothing the
    peer does, both joined to one hub."""
    nodes = []
    try:
        peer = start_mesh_node(tmp_path, "peer", model_path, "beta")
        nodes.append(peer)
        join(peer, hub.invite(), PEER_NAME)
        monkeypatch.setattr(root_conftest, "CLOSEDMESH", _entry_launcher(tmp_path))
        entry = start_mesh_node(tmp_path, "entry", model_path)
        monkeypatch.undo()
        nodes.append(entry)
        join(entry, hub.invite(), ENTRY_NAME)
        yield hub, peer, entry
    finally:
        for n in nodes:
            n.stop()


def _get(node, path: str) -> tuple[dict, str]:
    code, body = api(node, "GET", path, admin=False)
    assert code == 200, body
    return body, json.dumps(body)


def test_entry_lists_the_mesh_and_keeps_machines_out_of_its_open_status(entry_mesh):
    hub, peer, entry = entry_mesh
    client = openai.OpenAI(base_url=entry.v1, api_key="unused", timeout=300, max_retries=0)

    def beta_listed():
        return next((m for m in client.models.list().data if m.id == "beta"), None)

    listed = wait_for(beta_listed, 60, interval=0.5, what="the entry to list the peer's model")
    ext = listed.model_extra["closedmesh"]
    assert ext["served_by"] == "mesh" and ext["peers"] == 1 and ext["context_length"] == 1024

    # answers through the entry: one plain, one streamed with usage, one streamed without
    r = client.chat.completions.create(model="beta", messages=[{"role": "user", "content": "Say hello."}],
                                       max_tokens=16, temperature=0)
    assert r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(
        model="beta", messages=[{"role": "user", "content": "Count to five."}], max_tokens=16, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens > 0
    assert list(client.chat.completions.create(model="beta", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=8, stream=True))

    # the peer announces its engine's own figures; the entry's mesh figure comes from them
    def peer_announced():
        st, _ = _get(peer, "/api/status")
        return st["native_tps_p50_by_model"].get("beta") and st
    peer_status = wait_for(peer_announced, 30, interval=0.5, what="the peer's native figures")
    assert peer_status["catalog"]["models"]["beta"]["native"]["samples"] >= 3
    assert peer_status["native_ttft_ms_p50_by_model"]["beta"] > 0

    def entry_sees_mesh_figures():
        st, _ = _get(entry, "/api/status")
        mesh = st["catalog"]["models"].get("beta", {}).get("mesh") or {}
        return mesh.get("samples", 0) >= 3 and st
    doc = wait_for(entry_sees_mesh_figures, 30, interval=0.5, what="the entry's catalog to carry the peer's figures")

    beta = doc["catalog"]["models"]["beta"]
    assert beta["peers"] == 1 and beta["context_length"] == 1024
    assert beta["measured"]["samples"] == 3  # this node's own clients, end to end
    assert beta["measured"]["tps_p50"] > 0 and beta["measured"]["ttft_ms_p50"] > 0
    assert doc["measured_tps_p50_by_model"]["beta"] == beta["measured"]["tps_p50"]
    assert doc["measured_ttft_ms_p50_by_model"]["beta"] == beta["measured"]["ttft_ms_p50"]
    assert "beta" not in doc["native_tps_p50_by_model"]  # the entry's engine served none of them
    assert beta["mesh"]["peers_measured"] == 1 and beta["mesh"]["window_seconds"] == 3600
    assert beta["mesh"]["tps_p50_median"] > 0 and beta["mesh"]["ttft_ms_p50_best"] > 0
    assert doc["catalog"]["window"] == {"max_samples": 200, "max_age_seconds": 3600}
    assert doc["entry"] is True and doc["version"] == __version__ and doc["mesh"]["connected"] is True

    # nothing in it names a machine: no address, port, URL, host name, peer or node name or id, token
    _, text = _get(entry, "/api/status")
    peer_id = api(peer, "GET", "/api/status")[1]["node"]["id"]
    entry_full = entry.home / "config" / "admin-token"
    forbidden = [PEER_NAME, ENTRY_NAME, "alice", "entry-box", socket.gethostname(), "127.0.0.1", "localhost",
                 "0.0.0.0", "nats://", "tls://", "http://", "https://", f":{entry.port}", f":{hub.port}",
                 str(hub.port), str(entry.port), str(peer.port), peer_id, entry_full.read_text().strip(),
                 "Say hello", "Count to five"]
    for word in forbidden:
        assert word not in text, f"the open status names {word!r}: {text}"
    assert not set(doc) & {"node", "peers", "capability", "host", "port"}

    # `closedmesh status` reads an entry's open document too
    p = run_cli(entry.home, "status", "--port", str(entry.port))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("entry node") and "beta" in p.stdout and "peers 1" in p.stdout

    # the same figures in /v1/models, named for the statistic each is
    ext = beta_listed().model_extra["closedmesh"]
    assert ext["measured_samples"] == 3 and ext["measured_tps_p50"] == beta["measured"]["tps_p50"]
    assert ext["mesh_tps_p50_median"] == beta["mesh"]["tps_p50_median"]
    assert ext["mesh_ttft_ms_p50_best"] == beta["mesh"]["ttft_ms_p50_best"]
    assert ext["tokens_per_second_p50"] == ext["mesh_tps_p50_median"]  # the median, no longer the highest

    # the event stream of an entry sends open status documents only, also when peers change
    events: list[dict] = []
    deadline = time.monotonic() + 60
    with httpx.stream("GET", entry.base_url + "/api/events", timeout=30) as r:
        lines = r.iter_lines()
        assert api(peer, "POST", "/api/mesh/leave")[0] == 200
        for line in lines:  # keep-alive comments come every 0.5 s: the deadline is checked often
            assert time.monotonic() < deadline, f"no event showed the peer gone: {events[-1:]}"
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            for word in forbidden:
                assert word not in data, f"an open event names {word!r}: {data}"
            events.append(json.loads(data))
            if events[-1]["catalog"]["models"]["beta"]["peers"] == 0:
                break
    # the snapshot, then a fresh document on the change; beta stays in the catalog for its measured window
    assert len(events) >= 2 and all(set(e) - {"type"} <= set(doc) for e in events)
    assert events[-1]["type"] == "status"  # a change is sent as a whole open document, not as the raw event
    gone = events[-1]["catalog"]["models"]["beta"]
    assert gone["mesh"] is None and gone["measured"]["samples"] == 3


def test_a_plain_node_keeps_its_full_status_with_the_catalog(entry_mesh):
    """Not an entry: /api/status still names the node and its peers (the owner's own view), and carries
    the catalog as well."""
    _, peer, _ = entry_mesh

    def entry_seen():
        st, _ = _get(peer, "/api/status")
        return any(p["name"] == ENTRY_NAME for p in st["peers"]) and st
    st = wait_for(entry_seen, 60, interval=0.5, what="the peer to see the entry node")
    assert st["node"]["port"] == peer.port and "catalog" in st
    for name in ("measured_tps_p50_by_model", "measured_ttft_ms_p50_by_model", "native_tps_p50_by_model",
                 "native_ttft_ms_p50_by_model"):
        assert isinstance(st[name], dict)
    smol = st["catalog"]["models"]["SmolLM2-135M-Instruct"]  # the entry node serves it (as this node can)
    assert smol["peers"] == 1 and smol["mesh"]["peers"] == 1
    assert st["catalog"]["models"]["beta"]["served_here"] is True

"""Model management through a real node: pull from a local stand-in for Hugging Face, load on demand
(once), idle unload, delete, and the admin-token / Origin / Host rules of the control API."""

from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
import threading

import httpx
import pytest

from runtime.models.embedded import FILENAME
from tests.conftest import CLOSEDMESH, seed_home, start_node, wait_for
from tests.runtime.hf_server import running_hub

pytestmark = pytest.mark.e2e

REPO_ID = "test-org/Smol-GGUF"
FILE = "smol-test.gguf"


@pytest.fixture(scope="module")
def hub(model_path):
    """The fake Hub serving the real GGUF under another name, on its own event loop thread."""
    with running_hub([(REPO_ID, FILE, model_path)]) as h:
        yield h


@pytest.fixture(scope="module")
def mnode(tmp_path_factory, model_path, hub):
    home = tmp_path_factory.mktemp("models-node")
    seed_home(home, model_path)
    n = start_node(home, "--model", str(home / "data" / "models" / FILENAME), "--ctx-per-slot", "1024",
                   "--slots", "2", "--model-ttl", "3", env={"HF_ENDPOINT": hub.base_url, "HF_HUB_CACHE":
                                                              str(home / "hf-cache")})
    yield n
    assert n.stop() == 0


def admin(node) -> dict:
    token = (node.home / "config" / "admin-token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def test_control_api_refuses_without_token_and_cross_origin(mnode):
    with httpx.Client(base_url=mnode.base_url, timeout=30) as c:
        r = c.get("/api/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "admin_token_required"
        r = c.post("/api/models/pull", json={"model": "x"}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = c.post("/api/models/pull", json={"model": f"{REPO_ID}/{FILE}"},
                   headers={**admin(mnode), "Origin": "http://localhost:3000"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin_forbidden"
        r = c.post("/api/models/pull", json={"model": f"{REPO_ID}/{FILE}"},
                   headers={**admin(mnode), "Origin": "https://evil.example"})
        assert r.status_code == 403
        r = c.get("/api/models", headers={**admin(mnode), "Host": "rebind.attacker.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_host"
        # the token file is readable by its owner only
        assert oct((mnode.home / "config" / "admin-token").stat().st_mode & 0o777) == "0o600"


def test_listing_has_catalog_fit_and_recommendation(mnode):
    r = httpx.get(mnode.base_url + "/api/models", headers=admin(mnode), timeout=30)
    assert r.status_code == 200
    data = r.json()
    assert 15 <= len(data["catalog"]) <= 25
    assert all("fit" in row and row["fit"]["label"] for row in data["catalog"])
    assert data["recommended"] in {row["id"] for row in data["catalog"]}
    smol = [row for row in data["catalog"] if row["id"] == "SmolLM2-135M-Instruct-Q4_1"][0]
    assert smol["state"] == "ready"


def test_unknown_reference_lists_close_matches(mnode):
    r = httpx.post(mnode.base_url + "/api/models/pull", json={"model": "qwen3-9b"}, headers=admin(mnode))
    assert r.status_code == 404
    assert "Qwen3-8B" in r.json()["error"]["message"]


def test_pull_then_load_on_demand_once_then_idle_unload_then_delete(mnode, hub, model_id):
    h = admin(mnode)
    events: list[dict] = []

    def watch():
        import json

        with httpx.stream("GET", mnode.base_url + "/api/events", timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    ev = json.loads(line[6:])
                    events.append(ev)
                    if ev.get("model") == "smol-test" and ev.get("state") == "on_disk":
                        return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    hub.knobs.rate_bps = 40_000_000  # a few seconds on loopback, so progress events flow mid-transfer
    try:
        r = httpx.post(mnode.base_url + "/api/models/pull", json={"model": f"{REPO_ID}/{FILE}"}, headers=h,
                       timeout=30)
        assert r.status_code == 202 and r.json()["id"] == "smol-test" and r.json()["state"] == "downloading"
        watcher.join(120)
    finally:
        hub.knobs.rate_bps = None
    progress = [e for e in events if e.get("type") == "download_progress" and e.get("model") == "smol-test"]
    assert progress and progress[-1]["state"] == "done"
    assert progress[-1]["done_bytes"] == progress[-1]["total_bytes"] > 90_000_000
    assert any(p["rate_bps"] > 0 for p in progress)
    models_dir = mnode.home / "data" / "models"
    assert (models_dir / FILE).is_file()
    # the new model is routable and loads on first use — once, however many requests arrive together
    assert "smol-test" in [m["id"] for m in httpx.get(mnode.v1 + "/models").json()["data"]]
    body = {"model": "smol-test", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4,
            "temperature": 0}
    with cf.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: httpx.post(mnode.v1 + "/chat/completions", json=body, timeout=120),
                              range(4)))
    assert [r.status_code for r in results] == [200] * 4
    assert mnode.log().count("runtime.engine.engine: loaded smol-test") == 1
    loads = [e for e in events if e.get("model") == "smol-test" and e.get("state") == "loading"]
    assert len(loads) <= 1
    # idle for longer than --model-ttl 3: unloaded; the pinned default model stays loaded
    def state(mid):
        return {m["id"]: m["state"] for m in httpx.get(mnode.base_url + "/api/status").json()["models"]}.get(mid)

    wait_for(lambda: state("smol-test") == "on_disk", 60, interval=0.5, what="idle unload")
    assert state(model_id) == "ready"
    # explicit load / unload
    r = httpx.post(mnode.base_url + "/api/models/smol-test/load", headers=h, timeout=120)
    assert r.status_code == 200 and r.json()["state"] == "ready"
    r = httpx.post(mnode.base_url + "/api/models/smol-test/unload", headers=h, timeout=120)
    assert r.status_code == 200 and r.json()["state"] == "on_disk"
    # delete
    r = httpx.delete(mnode.base_url + "/api/models/smol-test", headers=h, timeout=60)
    assert r.status_code == 200
    assert not (models_dir / FILE).exists()
    r = httpx.post(mnode.v1 + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    # the default model cannot be deleted from under the running node
    r = httpx.delete(mnode.base_url + f"/api/models/{model_id}", headers=h)
    assert r.status_code == 409


def test_cli_pull_through_the_node_and_offline(mnode, hub, tmp_path):
    httpx.delete(mnode.base_url + "/api/models/smol-test", headers=admin(mnode))  # start from "not downloaded"
    env = dict(os.environ, CLOSEDMESH_HOME=str(mnode.home), HF_ENDPOINT=hub.base_url)
    p = subprocess.run([str(CLOSEDMESH), "models", "pull", f"{REPO_ID}/{FILE}", "--port", str(mnode.port)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "smol-test: ready to use" in p.stdout and "MB/s" in p.stderr
    p = subprocess.run([str(CLOSEDMESH), "models", "rm", "smol-test", "--port", str(mnode.port)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0 and not (mnode.home / "data" / "models" / FILE).exists()
    # no node running: the CLI downloads by itself into its own home
    env2 = dict(os.environ, CLOSEDMESH_HOME=str(tmp_path), HF_ENDPOINT=hub.base_url)
    p = subprocess.run([str(CLOSEDMESH), "models", "pull", f"{REPO_ID}/{FILE}", "--port", "1"],
                       capture_output=True, text=True, env=env2, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "data" / "models" / FILE).is_file()
    p = subprocess.run([str(CLOSEDMESH), "models", "list", "--json", "--port", "1"], capture_output=True, text=True,
                       env=env2, timeout=60)
    import json

    local = {m["id"]: m for m in json.loads(p.stdout)["local"]}
    assert local["smol-test"]["state"] == "on_disk"
    # a pulled model is served by its id
    n = start_node(tmp_path, "--model", "smol-test", "--ctx-per-slot", "512", env={"HF_ENDPOINT": hub.base_url})
    try:
        assert [m["id"] for m in httpx.get(n.v1 + "/models").json()["data"]] == ["smol-test"]
    finally:
        assert n.stop() == 0


def test_corrupted_file_on_disk_is_quarantined_not_loaded(mnode, hub):
    h = admin(mnode)
    r = httpx.post(mnode.base_url + "/api/models/pull", json={"model": f"{REPO_ID}/{FILE}"}, headers=h, timeout=30)
    assert r.status_code == 202
    wait_for(lambda: {m["id"]: m["state"] for m in httpx.get(mnode.base_url + "/api/status").json()["models"]}
             .get("smol-test") == "on_disk", 120, interval=0.2, what="the pull to finish")
    path = mnode.home / "data" / "models" / FILE
    with open(path, "r+b") as f:  # bit rot after the download
        f.seek(50_000_000)
        b = f.read(1)
        f.seek(50_000_000)
        f.write(bytes([b[0] ^ 0xFF]))
    loads_before = mnode.log().count("runtime.engine.engine: loaded smol-test")
    r = httpx.post(mnode.v1 + "/chat/completions", json={"model": "smol-test", "max_tokens": 2,
                                                        "messages": [{"role": "user", "content": "hi"}]}, timeout=120)
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "model_corrupt" and "quarantine" in err["message"]
    assert not path.exists() and (mnode.home / "data" / "models" / "quarantine" / FILE).is_file()
    assert mnode.log().count("runtime.engine.engine: loaded smol-test") == loads_before


def test_cancel_a_pull(mnode, hub):
    h = admin(mnode)
    httpx.delete(mnode.base_url + "/api/models/smol-test", headers=h)  # whatever an earlier test left
    hub.knobs.rate_bps = 4_000_000  # ~25 s for the whole file: time to cancel mid-way
    try:
        r = httpx.post(mnode.base_url + "/api/models/pull", json={"model": f"{REPO_ID}/{FILE}"}, headers=h)
        assert r.status_code == 202

        def progressed():
            m = {m["id"]: m for m in httpx.get(mnode.base_url + "/api/status").json()["models"]}.get("smol-test")
            return m and (m.get("download") or {}).get("done_bytes", 0) > 1_000_000

        wait_for(progressed, 60, interval=0.1, what="the download to make progress")
        r = httpx.post(mnode.base_url + "/api/models/smol-test/cancel", headers=h)
        assert r.status_code == 200
        wait_for(lambda: {m["id"]: m["state"] for m in httpx.get(mnode.base_url + "/api/status").json()["models"]}
                 .get("smol-test") == "available", 30, what="the model to be 'available' again")
        partials = list((mnode.home / "cache").rglob("*.partial"))
        assert partials == [] and not (mnode.home / "data" / "models" / FILE).exists()
        r = httpx.post(mnode.base_url + "/api/models/smol-test/cancel", headers=h)
        assert r.status_code == 404
    finally:
        hub.knobs.rate_bps = None


def test_memory_budget_evicts_the_least_recently_used_idle_model(tmp_path, model_path, hub, model_id):
    """Budget 0.3 GiB: the default model (~0.14 GiB with its KV cache) and a second copy cannot both
    be loaded; asking for one unloads the other, and each still answers."""
    seed_home(tmp_path, model_path)
    n = start_node(tmp_path, "--model", str(tmp_path / "data" / "models" / FILENAME), "--ctx-per-slot", "1024",
                   "--slots", "2", "--memory-budget", "0.3", env={"HF_ENDPOINT": hub.base_url,
                                                                  "HF_HUB_CACHE": str(tmp_path / "hf")})
    try:
        h = admin(n)
        assert httpx.post(n.base_url + "/api/models/pull", json={"model": f"{REPO_ID}/{FILE}"},
                          headers=h).status_code == 202

        def states():
            return {m["id"]: m["state"] for m in httpx.get(n.base_url + "/api/status").json()["models"]}

        wait_for(lambda: states().get("smol-test") == "on_disk", 120, interval=0.2, what="the pull")

        def ask(mid):
            r = httpx.post(n.v1 + "/chat/completions", timeout=120, json={
                "model": mid, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text

        ask("smol-test")
        assert states() == {model_id: "on_disk", "smol-test": "ready"}
        assert httpx.get(n.base_url + "/health").status_code == 200  # an evicted model is still servable
        ask(model_id)
        assert states() == {model_id: "ready", "smol-test": "on_disk"}
        assert "to make room for smol-test" in n.log() and f"to make room for {model_id}" in n.log()
    finally:
        assert n.stop() == 0


def test_model_in_the_hugging_face_cache_is_reused_not_downloaded(mnode, hub, model_path):
    cache = mnode.home / "hf-cache"  # the node's HF_HUB_CACHE
    commit = "a" * 40
    snap = cache / "models--test-org--Cached-GGUF" / "snapshots" / commit
    snap.mkdir(parents=True)
    os.link(model_path, snap / "cached.gguf")
    (cache / "models--test-org--Cached-GGUF" / "refs").mkdir()
    (cache / "models--test-org--Cached-GGUF" / "refs" / "main").write_text(commit)
    requests_before = len(hub.requests)
    h = admin(mnode)
    r = httpx.post(mnode.base_url + "/api/models/pull", json={"model": "test-org/Cached-GGUF/cached.gguf"}, headers=h)
    assert r.status_code == 202
    wait_for(lambda: {m["id"]: m["state"] for m in httpx.get(mnode.base_url + "/api/status").json()["models"]}
             .get("cached") == "on_disk", 60, what="the cached model to be registered")
    assert len(hub.requests) == requests_before  # nothing was fetched
    assert not (mnode.home / "data" / "models" / "cached.gguf").exists()  # used in place, not copied
    r = httpx.post(mnode.v1 + "/chat/completions", timeout=120, json={
        "model": "cached", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text

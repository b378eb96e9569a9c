"""Entry fixtures: a real hub, a real serving node (the default model) and real entry nodes
(`closedmesh entry`), each a separate process with its own home folder, all on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from ..conftest import CLOSEDMESH, NodeProcess, remember_log, wait_for
from ..mesh.conftest import HubProcess


class EntryProcess(NodeProcess):
    """A `closedmesh entry` process: a node process with keys and an admin API."""

    @property
    def admin_url(self) -> str:
        return json.loads((self.home / "config" / "entry-admin.json").read_text())["url"]

    def keys(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, CLOSEDMESH_HOME=str(self.home))
        r = subprocess.run([str(CLOSEDMESH), "keys", *args], env=env, capture_output=True, text=True, timeout=60)
        if check:
            assert r.returncode == 0, f"closedmesh keys {' '.join(args)} failed ({r.returncode}): {r.stderr}"
        return r

    def create_key(self, name: str, *limits: str) -> str:
        key = self.keys("create", "--name", name, *limits).stdout.strip()
        assert key.startswith("cm_") and len(key) == 46, key
        return key

    def admin(self, path: str) -> dict:
        token = (self.home / "config" / "admin-token").read_text().strip()
        req = urllib.request.Request(self.admin_url + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())


def run_entry(home: Path, *args: str) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CLOSEDMESH_HOME=str(home), PYTHONUNBUFFERED="1")
    logf = open(remember_log(home / "entry.log"), "w")
    return subprocess.Popen([str(CLOSEDMESH), "entry", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
                             *args], stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def start_entry(home: Path, hub: HubProcess, name: str, *args: str) -> EntryProcess:
    """An entry node that joined ``hub`` with an invite for the entry role, once it answers. (A join the
    hub did not answer in time, on a machine loaded by other tests, is tried once more with a new invite:
    that is the join's own retry advice, and not what these tests are about.)"""
    for attempt in range(2):
        invite = hub.cli("mesh", "invite", "--ttl", "1h", "--port", "1", "--role", "entry").stdout.strip()
        proc = run_entry(home, "--mesh", invite, "--name", name, *args)
        e = EntryProcess(proc, home, 0, home / "entry.log")
        try:
            e.port = wait_for(lambda e=e: _port(e), 120, what="the entry node to bind its port")
            break
        except AssertionError:
            if attempt or "did not answer the join request" not in e.log():
                raise

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"closedmesh entry exited with {proc.returncode}:\n{e.log()}")
        try:
            with urllib.request.urlopen(e.base_url + "/health", timeout=2) as r:
                return r.status == 200 and (home / "config" / "entry-admin.json").exists()
        except (urllib.error.URLError, OSError):
            return False

    wait_for(up, 60, what="the entry node to be ready")
    return e


def _port(e: EntryProcess) -> int | None:
    if e.proc.poll() is not None:
        raise AssertionError(f"closedmesh entry exited with {e.proc.returncode}:\n{e.log()}")
    for line in e.log().splitlines():
        if "serving the OpenAI API on http://" in line:
            return int(line.rsplit(":", 1)[1].split("/")[0])
    return None

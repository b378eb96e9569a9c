"""Hostile requests through a real node (issue 10): inputs bounded before any work, invalid Unicode,
aiohttp's own parser errors, slow and half-open connections, descriptor exhaustion, secret files with
loose modes. Each answer must be an OpenAI-shaped error with the right status, quickly, and the node
must keep serving."""

from __future__ import annotations

import json
import os
import resource
import selectors
import socket
import stat
import threading
import time

import httpx
import psutil
import pytest

from runtime.validation import LIMITS
from runtime.models.embedded import FILENAME
from tests.conftest import seed_home, start_node, wait_for
from tests.e2e.test_wire import assert_error

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
MSGS = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def http(node):
    with httpx.Client(base_url=node.base_url, timeout=120) as c:
        yield c


def exchange(port: int, data: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the node closes the connection: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_response(s)


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    raw = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), raw[:200]
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    return int(lines[0].split()[1]), headers, body


def openai_error(status: int, headers: dict[str, str], body: bytes, expected_status: int, code: str) -> dict:
    assert status == expected_status, (status, body)
    assert headers["content-type"].startswith("application/json")
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["code"] == code, err
    return err


class HealthPoller:
    """Polls /health on its own connection while a test runs; the worst latency says whether the event
    loop froze."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.worst = 0.0
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as c:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                assert c.get("/health").status_code == 200
                self.worst = max(self.worst, time.perf_counter() - t0)
                self.count += 1
                time.sleep(0.02)

    def __enter__(self) -> "HealthPoller":
        self._thread.start()
        wait_for(lambda: self.count >= 3, 30, what="the /health poller to start")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)


# -- 1. inputs bounded before any work ---------------------------------------------------------------


@pytest.mark.parametrize("path, body, param, code", [
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": ""}] * (LIMITS.messages + 1)},
     "messages", "array_above_max_length"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x" * LIMITS.text_chars},
                                                           {"role": "user", "content": "y"}]},
     "messages", "string_above_max_length"),
    ("/v1/completions", {"model": MODEL, "prompt": ["a"] * (LIMITS.prompts + 1)}, "prompt", "array_above_max_length"),
    ("/v1/completions", {"model": MODEL, "prompt": ["a"] * 200, "n": 16}, "n", "array_above_max_length"),
    ("/v1/completions", {"model": MODEL, "prompt": [1] * (LIMITS.token_ids + 1)}, "prompt", "array_above_max_length"),
    ("/v1/chat/completions", {"model": MODEL, "messages": MSGS, "stop": ["x"] * (LIMITS.stops + 1)}, "stop",
     "array_above_max_length"),
    ("/v1/chat/completions", {"model": MODEL, "messages": MSGS, "stop": "x" * (LIMITS.stop_chars + 1)}, "stop",
     "string_above_max_length"),
    ("/v1/chat/completions", {"model": MODEL, "messages": MSGS,
                              "logit_bias": {str(i): 1 for i in range(LIMITS.logit_bias + 1)}},
     "logit_bias", "array_above_max_length"),
    ("/v1/embeddings", {"model": MODEL, "input": ["a"] * (LIMITS.embedding_inputs + 1)}, "input",
     "array_above_max_length"),
])
def test_oversized_inputs_are_refused_naming_the_field_and_limit(http, path, body, param, code):
    r = http.post(path, json=body)
    err = assert_error(r, 400, code, param)
    assert param in err["message"] and ("at most" in err["message"] or "longer than" in err["message"]), err
    assert r.headers["x-should-retry"] == "false"


def test_fifty_thousand_prompts_times_sixteen_refused_at_once(node, http):
    """Issue 10 #5: 50,000 one-letter prompts with n 16 cost +600 MB and a 5.6 s stall before a 503."""
    proc = psutil.Process(node.proc.pid)
    rss_before = proc.memory_info().rss
    t0 = time.perf_counter()
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": ["a"] * 50_000, "n": 16, "max_tokens": 1})
    elapsed = time.perf_counter() - t0
    err = assert_error(r, 400, "array_above_max_length", "prompt")
    assert str(LIMITS.prompts) in err["message"]
    grown = proc.memory_info().rss - rss_before
    assert elapsed < 2.0, f"refusing took {elapsed:.2f}s"
    assert grown < 50 * 2**20, f"RSS grew by {grown / 2**20:.0f} MB"


def test_requests_at_the_limits_are_served(http):
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": MSGS, "max_tokens": 2,
                                                "stop": ["x" * LIMITS.stop_chars] + ["y"] * (LIMITS.stops - 1),
                                                "logit_bias": {str(i): 0 for i in range(LIMITS.logit_bias)}})
    assert r.status_code == 200, r.text
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b"], "n": 2, "max_tokens": 1})
    assert r.status_code == 200 and len(r.json()["choices"]) == 4, r.text


def test_body_too_large_refused_before_it_is_sent(node):
    """A Content-Length over the limit is answered 413 at once, not after reading 16 MiB."""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {17 * 2**20}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
        s.sendall(head + b'{"model": "x", ')  # and nothing more: the answer must not wait for the body
        s.settimeout(10)
        first = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 413"), first[:200]
    assert b'"request_too_large"' in first


@pytest.mark.parametrize("depth", [LIMITS.json_depth + 1, 100_000])
def test_deeply_nested_json_is_400(http, depth):
    nested = "[" * depth + "]" * depth
    raw = '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "metadata": %s}' % (MODEL, nested)
    r = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    err = assert_error(r, 400, "json_too_deep")
    assert str(LIMITS.json_depth) in err["message"]


def test_brackets_inside_strings_do_not_count_as_nesting(http):
    content = "[{" * (LIMITS.json_depth // 2 + 10)  # deeper than the limit if brackets in strings counted
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": content}],
                                                "max_tokens": 1})
    assert r.status_code == 200, r.text


# -- 2. lone surrogates --------------------------------------------------------------------------------


@pytest.mark.parametrize("path, raw, param", [
    ("/v1/completions", '{"model": "%s", "prompt": "ab\\ud800cd"}' % MODEL, "prompt"),
    ("/v1/completions", '{"model": "%s", "prompt": ["ok", "\\udfff"]}' % MODEL, "prompt[1]"),
    ("/v1/embeddings", '{"model": "%s", "input": "\\ud800"}' % MODEL, "input"),
    ("/v1/embeddings", '{"model": "%s", "input": ["fine", "x\\ud83d"]}' % MODEL, "input[1]"),
    ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}' % MODEL,
     "messages[0].content"),
    ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": [{"type": "text", '
                             '"text": "\\ud800"}]}]}' % MODEL, "messages[0].content[0].text"),
    ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], '
                             '"stop": ["\\ud800"]}' % MODEL, "stop"),
])
def test_lone_surrogate_is_400_naming_the_field(http, path, raw, param):
    r = http.post(path, content=raw, headers={"content-type": "application/json"})
    err = assert_error(r, 400, "invalid_unicode", param)
    assert "surrogate" in err["message"]


def test_paired_surrogates_are_ordinary_text(http):
    raw = '{"model": "%s", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 1}' % MODEL
    r = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


# -- 3. aiohttp's own errors in the OpenAI shape -------------------------------------------------------


@pytest.mark.parametrize("raw, status, code", [
    (b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n", 431, "header_too_large"),
    (b"GET /health HTTP/1.1\r\nHost: localhost\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(200)) + b"\r\n",
     431, "too_many_headers"),
    (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 431, "header_too_large"),
    (b"GET /health HTTP/1.1\r\n\r\n", 400, "missing_host"),
    (b"GARBAGE\r\n\r\n", 400, "bad_http_request"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400, "bad_http_request"),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked"
     b"\r\n\r\n", 400, "bad_http_request"),
])
def test_parser_errors_are_openai_errors(node, raw, status, code):
    log_before = len(node.log())
    got = exchange(node.port, raw)
    openai_error(*got, status, code)  # and the node closed the connection (exchange reads to the end)
    assert "Traceback" not in node.log()[log_before:]
    assert httpx.get(node.base_url + "/health").status_code == 200


# -- 5. the event loop stays responsive ----------------------------------------------------------------


def test_twenty_thousand_empty_messages_answered_quickly_while_health_answers(node, http):
    """Issue 10 #4: 20,000 empty user messages froze the event loop, /health included, for 18 s."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": ""}] * 20_000}
    with HealthPoller(node.base_url) as poller:
        for _ in range(5):  # several in a row, so polls overlap them however fast each one is refused
            t0 = time.perf_counter()
            r = http.post("/v1/chat/completions", json=body)
            elapsed = time.perf_counter() - t0
            assert_error(r, 400, "array_above_max_length", "messages")
            assert elapsed < 2.0, f"answered after {elapsed:.2f}s"
        # a poll sent while the last one was refused has its answer (its latency is in `worst`)
        polls = poller.count
        wait_for(lambda: poller.count >= polls + 2, 30, what="/health to answer after the requests")
    assert poller.worst < 1.0, f"/health took up to {poller.worst:.2f}s"


def test_most_messages_allowed_keep_health_answering(node, http):
    """Under the limits a request is worked on, and however its text tokenizes the loop keeps answering
    /health. Special-token text is the slow case (llama.cpp's special-token pass is quadratic in their
    number): 1900 messages of '<|im_end|>' are ~5,700 special tokens in 19,000 characters. The template is
    rendered in a thread (64 messages or more) and the text tokenized in the engine's worker process, so
    the event loop only waits on them."""
    messages = [{"role": "user", "content": "<|im_end|>"}] * 1900
    with HealthPoller(node.base_url) as poller:
        r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 1})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert_error(r, 400, "context_length_exceeded", "messages")
    assert poller.worst < 1.0, f"/health took up to {poller.worst:.2f}s"


# -- 4. slow and half-open connections -----------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_node(tmp_path_factory, model_path):
    """A node whose clients get 2 s to send a request head or to resume a stalled body."""
    home = tmp_path_factory.mktemp("strict-home")
    seed_home(home, model_path)
    n = start_node(home, "--model", str(home / "data" / "models" / FILENAME), "--slots", "1",
                   "--ctx-per-slot", "512", "--read-timeout", "2")
    yield n
    assert n.stop() == 0, n.log()[-3000:]


def test_half_sent_head_times_out_with_408(strict_node):
    with socket.create_connection(("127.0.0.1", strict_node.port), timeout=30) as s:
        t0 = time.monotonic()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: appl")
        got = read_response(s)
        waited = time.monotonic() - t0
    err = openai_error(*got, 408, "request_timeout")
    assert "head" in err["message"]
    assert 1.5 < waited < 10, waited


def test_silent_connection_is_closed(strict_node):
    """A connection that sends nothing is closed at the deadline, without an answer (as an idle one: a
    client that opened it ahead of time must not take a 408 for the answer to its next request)."""
    with socket.create_connection(("127.0.0.1", strict_node.port), timeout=30) as s:
        t0 = time.monotonic()
        assert s.recv(65536) == b""  # closed by the node
        waited = time.monotonic() - t0
    assert 1.5 < waited < 10, waited


def test_stalled_body_times_out_with_408(strict_node):
    body = json.dumps({"model": MODEL, "messages": MSGS}).encode()
    with socket.create_connection(("127.0.0.1", strict_node.port), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
        t0 = time.monotonic()
        got = read_response(s)
        waited = time.monotonic() - t0
    err = openai_error(*got, 408, "request_timeout")
    assert "body" in err["message"]
    assert 1.5 < waited < 10, waited


def test_trickled_body_times_out(strict_node):
    """A body sent a byte at a time (never pausing as long as the timeout) is still cut off: it must
    average 1 KiB/s after its first read_timeout seconds."""
    body = json.dumps({"model": MODEL, "messages": MSGS}).encode()
    with socket.create_connection(("127.0.0.1", strict_node.port), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        t0 = time.monotonic()
        closed = False
        for b in body:
            try:
                s.sendall(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.5)
            if time.monotonic() - t0 > 15:
                break
        if not closed:
            got = read_response(s)
            assert got[0] == 408, got
        waited = time.monotonic() - t0
    assert waited < 10, waited


def test_slow_clients_do_not_disturb_others(strict_node):
    """Many half-open connections at once: all closed by the deadline, and real requests keep working."""
    socks = [socket.create_connection(("127.0.0.1", strict_node.port), timeout=30) for _ in range(50)]
    try:
        for s in socks:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: loc")
        assert httpx.get(strict_node.base_url + "/health", timeout=10).status_code == 200
        for s in socks:
            assert read_response(s)[0] == 408
    finally:
        for s in socks:
            s.close()
    assert httpx.get(strict_node.base_url + "/health", timeout=10).status_code == 200


# -- 4. descriptor exhaustion --------------------------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc (Linux)")
def test_descriptor_exhaustion_sheds_load_and_logs_once(tmp_path, model_path):
    """Issue 10 #6: 21,000 half-open connections exhausted the descriptors and wrote 43 MB of 'Too many
    open files' tracebacks in 25 s. Here the node's limit is lowered while it runs: connections past its
    budget are answered 503, accept failures are logged once, and /health answers once they close."""
    seed_home(tmp_path, model_path)
    # A read timeout longer than this test's first part: connections within the budget stay open while
    # the rest arrive (one closed early would make room for a later one, which would then not be shed).
    n = start_node(tmp_path, "--model", str(tmp_path / "data" / "models" / FILENAME), "--slots", "1",
                   "--ctx-per-slot", "512", "--read-timeout", "120")
    socks: list[socket.socket] = []
    try:
        pid = n.proc.pid
        _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        log_before = len(n.log())

        # Room for ~30 connections past what the node holds: the rest are shed with a 503. A busy machine
        # can leave connections in the listen backlog for seconds, so answers are waited for (a shed one is
        # answered as soon as the node accepts it), not read with a fixed per-socket timeout.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds(pid) + 64 + 30, hard))
        for _ in range(150):
            socks.append(socket.create_connection(("127.0.0.1", n.port), timeout=30))
        answers: dict[socket.socket, bytes] = {}
        sel = selectors.DefaultSelector()
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + 90
        while len(answers) < 100 and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                answers[s] = s.recv(65536)
                sel.unregister(s)
        sel.close()
        shed = [a for a in answers.values() if a.startswith(b"HTTP/1.1 503")]
        for first in shed:
            assert b'"overloaded"' in first and b"Retry-After: 1" in first
        assert len(shed) == len(answers), n.log()[log_before:][-3000:]
        assert len(shed) >= 100, f"only {len(shed)} of 150 connections were shed"
        assert len(shed) <= 150 - 8, "connections within the budget were shed too"
        for s in socks:
            s.close()
        socks.clear()

        # Fewer descriptors than the node needs even for its budget: accept() itself fails (EMFILE).
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds(pid) + 4, hard))
        for _ in range(300):
            try:
                socks.append(socket.create_connection(("127.0.0.1", n.port), timeout=5))
            except OSError:
                break  # the listen backlog is full: that is the point
        time.sleep(3)
        for s in socks:
            s.close()
        socks.clear()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (4096, hard))

        wait_for(lambda: _health(n.base_url) == 200, 30, what="/health to answer again")
        log = n.log()[log_before:]
        assert "out of file descriptors" in log
        assert log.count("out of file descriptors") <= 2, log[:5000]
        assert "Traceback" not in log, log[:5000]
        assert len(log) < 20_000, f"{len(log)} bytes of log"
    finally:
        for s in socks:
            s.close()
        assert n.stop() == 0, n.log()[-3000:]


def _health(base_url: str) -> int | None:
    try:
        return httpx.get(base_url + "/health", timeout=5).status_code
    except httpx.HTTPError:
        return None


# -- 6. secret files with loose modes ------------------------------------------------------------------


def test_loose_secret_files_are_fixed_to_0600_with_a_warning(tmp_path, model_path):
    """A pre-existing admin-token or mesh key file readable by others was used silently."""
    from runtime.mesh.identity import Identity

    config = tmp_path / "config"
    config.mkdir(parents=True)
    token, seed = "a-token-from-a-backup", Identity.generate().seed
    (config / "admin-token").write_text(token + "\n")
    (config / "mesh-node.seed").write_text(seed + "\n")
    os.chmod(config / "admin-token", 0o644)
    os.chmod(config / "mesh-node.seed", 0o664)
    seed_home(tmp_path, model_path)
    # No keyring: the mesh key lives in its fallback file, as on a headless server.
    n = start_node(tmp_path, "--model", str(tmp_path / "data" / "models" / FILENAME), "--slots", "1",
                   "--ctx-per-slot", "512", wait_ready=False,
                   env={"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"})
    try:
        for name, mode in (("admin-token", "644"), ("mesh-node.seed", "664")):
            assert stat.S_IMODE((config / name).stat().st_mode) == 0o600, name
            assert f"{config / name} was readable or writable by other users (mode {mode})" in n.log()
        # the secrets themselves are kept: the token still opens the control endpoints
        r = httpx.get(n.base_url + "/api/models", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        assert (config / "mesh-node.seed").read_text().strip() == seed
    finally:
        assert n.stop() == 0, n.log()[-3000:]

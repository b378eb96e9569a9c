"""Exact wire behaviour through raw HTTP (no SDK smoothing anything over)."""

from __future__ import annotations

import json
import socket
import uuid

import httpx
import pytest

pytestmark = pytest.mark.e2e

MSGS = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def http(node):
    with httpx.Client(base_url=node.base_url, timeout=120) as c:
        yield c


def sse_events(text: str) -> list[str]:
    """The data payloads of an SSE body, in order (comments dropped)."""
    out = []
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                out.append(line[6:])
    return out


def assert_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in r.text
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


def test_models_shape(http, model_id):
    r = http.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    m = body["data"][0]
    assert {"id", "object", "created", "owned_by", "closedmesh"} <= set(m)
    assert m["object"] == "model" and isinstance(m["created"], int)
    assert {"served_by", "context_length", "tokens_per_second_p50", "ttft_ms_p50", "peers"} <= set(m["closedmesh"])
    assert http.get(f"/v1/models/{model_id}").json()["id"] == model_id
    assert_error(http.get("/v1/models/nope"), 404, "model_not_found", "model")


def test_chat_shape(http, model_id):
    r = http.post("/v1/chat/completions", json={"model": model_id, "messages": MSGS, "max_tokens": 5,
                                                "temperature": 0, "some_future_field": {"x": 1}})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["id"].startswith("chatcmpl-") and len(b["id"]) == len("chatcmpl-") + 36
    assert b["object"] == "chat.completion" and b["model"] == model_id and b["system_fingerprint"].startswith("fp_")
    assert isinstance(b["created"], int)
    ch = b["choices"][0]
    assert ch["index"] == 0 and ch["message"]["role"] == "assistant" and ch["finish_reason"] in ("stop", "length")
    u = b["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_stream_wire_format(http, model_id):
    with http.stream("POST", "/v1/chat/completions", json={
            "model": model_id, "messages": MSGS, "max_tokens": 6, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and chunks.index(finals[0]) == len(chunks) - 2
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


def test_route_and_method_errors(http):
    assert_error(http.get("/v1/nothing-here"), 404, "not_found")
    r = http.get("/v1/chat/completions")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers.get("x-should-retry") == "false"


@pytest.mark.parametrize("body,param,code", [
    (b"{not json", None, "invalid_json"),
    (b"", None, "invalid_json"),
    (b"[1,2]", None, "invalid_json"),
    (json.dumps({"messages": MSGS}).encode(), "model", "missing_required_parameter"),
    (json.dumps({"model": 5, "messages": MSGS}).encode(), "model", "invalid_type"),
    (json.dumps({"model": "SmolLM2-135M-Instruct"}).encode(), "messages", "missing_required_parameter"),
    (json.dumps({"model": "SmolLM2-135M-Instruct", "messages": []}).encode(), "messages", "empty_array"),
    (json.dumps({"model": "SmolLM2-135M-Instruct", "messages": "hi"}).encode(), "messages", "invalid_type"),
    (json.dumps({"model": "SmolLM2-135M-Instruct", "messages": [{"role": "wizard", "content": "x"}]}).encode(),
     "messages[0].role", None),
    (json.dumps({"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": 3}]}).encode(),
     "messages[0].content", "invalid_type"),
    (json.dumps({"model": "SmolLM2-135M-Instruct", "messages": MSGS, "temperature": "hot"}).encode(),
     "temperature", "invalid_type"),
    (json.dumps({"model": "SmolLM2-135M-Instruct", "messages": MSGS, "max_tokens": -1}).encode(), "max_tokens", None),
    (json.dumps({"model": "SmolLM2-135M-Instruct", "messages": MSGS, "max_tokens": True}).encode(), "max_tokens",
     "invalid_type"),
    (json.dumps({"model": "SmolLM2-135M-Instruct", "messages": MSGS, "stop": 5}).encode(), "stop", "invalid_type"),
    (json.dumps({"model": "SmolLM2-135M-Instruct", "messages": MSGS, "n": 100}).encode(), "n", None),
    (json.dumps({"model": "SmolLM2-135M-Instruct", "messages": MSGS, "logprobs": True, "top_logprobs": 21}).encode(),
     "top_logprobs", None),
    (json.dumps({"model": "SmolLM2-135M-Instruct", "messages": MSGS,
                 "response_format": {"type": "xml"}}).encode(), "response_format", None),
])
def test_bad_requests(http, body, param, code):
    r = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert_error(r, 400, code, param)
    assert r.headers.get("x-should-retry") == "false"


def test_unknown_model(http):
    r = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MSGS})
    err = assert_error(r, 404, "model_not_found", "model")
    assert "SmolLM2-135M-Instruct" in err["message"]  # says what is available


def test_context_length_exceeded_before_generation(http, model_id):
    long = "word " * 2500  # > 2048 tokens of context per slot in the test node
    r = http.post("/v1/chat/completions", json={"model": model_id, "messages": [{"role": "user", "content": long}]})
    err = assert_error(r, 400, "context_length_exceeded", "messages")
    assert "2048" in err["message"]
    r = http.post("/v1/chat/completions", json={"model": model_id, "messages": MSGS, "max_tokens": 5000})
    assert_error(r, 400, "context_length_exceeded", "max_tokens")
    r = http.post("/v1/completions", json={"model": model_id, "prompt": long})
    assert_error(r, 400, "context_length_exceeded", "prompt")


def test_body_too_large(http, model_id):
    big = json.dumps({"model": model_id, "messages": [{"role": "user", "content": "x" * (17 * 1024 * 1024)}]})
    r = http.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"})
    assert_error(r, 413, "request_too_large")


def test_embeddings_errors(http, model_id):
    assert_error(http.post("/v1/embeddings", json={"model": model_id}), 400, "missing_required_parameter", "input")
    assert_error(http.post("/v1/embeddings", json={"model": model_id, "input": [""]}), 400, None, "input")
    assert_error(http.post("/v1/embeddings", json={"model": model_id, "input": "x", "dimensions": 8}), 400,
                 "unsupported_parameter", "dimensions")
    assert_error(http.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404, "model_not_found")
    for bad in ([["hello"]], [[1.5]], [[True]], [[None]], 5, {}):
        assert_error(http.post("/v1/embeddings", json={"model": model_id, "input": bad}), 400, "invalid_type", "input")
    assert_error(http.post("/v1/embeddings", json={"model": model_id, "input": [[99999999]]}), 400, None, "input")


def test_garbage_never_500(http, model_id):
    """A grab-bag of hostile inputs: each gets a 4xx in the OpenAI shape and the node keeps serving."""
    bodies = [
        {"model": model_id, "messages": [None]},
        {"model": model_id, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        {"model": model_id, "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
        {"model": model_id, "messages": MSGS, "stream_options": {"include_usage": True}},
        {"model": model_id, "messages": MSGS, "stream": "yes"},
        {"model": model_id, "messages": MSGS, "logit_bias": {"abc": 1}},
        {"model": model_id, "messages": MSGS, "logit_bias": {"5": 1000}},
        {"model": model_id, "messages": MSGS, "tools": [{"type": "function", "function": {"name": "f"}}],
         "tool_choice": {"type": "function", "function": {"name": "g"}}},
        {"model": model_id, "messages": MSGS, "response_format": {"type": "json_schema", "json_schema": {}}},
        {"model": model_id, "messages": MSGS, "top_p": 7},
        {"model": model_id, "messages": MSGS, "seed": 1.5},
        {"model": model_id, "messages": [{"role": "tool", "content": "x"}]},
        {"model": [model_id], "messages": MSGS},
    ]
    for b in bodies:
        r = http.post("/v1/chat/completions", json=b)
        assert 400 <= r.status_code < 500, (b, r.status_code, r.text)
        assert_error(r, r.status_code)
    for b in [{"model": model_id, "prompt": 5}, {"model": model_id, "prompt": [[]]},
              {"model": model_id, "prompt": [999999999]}, {"model": model_id, "prompt": "x", "echo": "y"},
              {"model": model_id, "prompt": "x", "suffix": "y"}]:
        r = http.post("/v1/completions", json=b)
        assert_error(r, 400)
    assert http.get("/health").status_code == 200
    r = http.post("/v1/chat/completions", json={"model": model_id, "messages": MSGS, "max_tokens": 2})
    assert r.status_code == 200


def test_health_and_status(http, model_id):
    r = http.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    st = http.get("/api/status").json()
    assert {"id", "version", "uptime_seconds"} <= set(st["node"])
    cap = st["capability"]
    assert cap["backend"] == "cpu" and cap["threads"] >= 1 and cap["ram_total_bytes"] > 0
    assert {"devices", "ram_free_bytes", "vram_total_bytes", "vram_free_bytes", "gpu_layers"} <= set(cap)
    m = st["models"][0]
    assert m["id"] == model_id and m["state"] == "ready" and m["context_length"] == 2048 and m["slots"] == 4
    assert {"kv_cache_bytes", "batch_size", "file"} <= set(m)
    assert {"in_flight", "queued"} <= set(st["requests"])
    tp = st["throughput"][model_id]
    assert tp["samples"] > 0 and tp["tokens_per_second_p50"] > 0 and tp["ttft_ms_p50"] > 0


def test_dns_rebinding_and_cross_origin_refused(node):
    with httpx.Client(base_url=node.base_url, timeout=30) as c:
        r = c.get("/v1/models", headers={"Host": "evil.example.com"})
        assert_error(r, 403, "forbidden_host")
        r = c.get("/v1/models", headers={"Host": f"localhost:{node.port}"})
        assert r.status_code == 200
        r = c.post("/v1/chat/completions", headers={"Origin": "https://evil.example.com"},
                   json={"model": "SmolLM2-135M-Instruct", "messages": MSGS})
        assert_error(r, 403, "forbidden_origin")
        r = c.options("/v1/chat/completions", headers={"Origin": "http://localhost:3000",
                                                       "Access-Control-Request-Method": "POST"})
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_keepalive_comments_while_waiting(node, model_id):
    """A stream whose prompt takes a while to read gets SSE comments, not silence (test node: 0.5 s)."""
    # ~1500 tokens of prompt processing; the nonce first, so that no earlier request's cached prefix shortens it
    long = f"[{uuid.uuid4().hex}] " + "The quick brown fox jumps over the lazy dog. " * 150
    with httpx.Client(base_url=node.base_url, timeout=120) as c:
        with c.stream("POST", "/v1/chat/completions", json={
                "model": model_id, "messages": [{"role": "user", "content": long}], "max_tokens": 1,
                "stream": True}) as r:
            raw = r.read().decode()
    assert sse_events(raw)[-1] == "[DONE]"
    assert ": keep-alive" in raw


def test_raw_socket_garbage_keeps_serving(node):
    s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    s.sendall(b"\x00\x01GARBAGE / HTTP/9.9\r\n\r\n")
    s.recv(1000)
    s.close()
    with httpx.Client(base_url=node.base_url) as c:
        assert c.get("/health").status_code == 200

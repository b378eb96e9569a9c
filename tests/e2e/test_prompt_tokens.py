"""How messages become prompt tokens: a message cannot write the model's control tokens, and a request
that could never be held is refused as such (issue 10)."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.e2e


def _prompt_tokens(node, model_id: str, content: str) -> int:
    r = httpx.post(node.v1 + "/chat/completions", timeout=120, json={
        "model": model_id, "max_tokens": 1, "temperature": 0, "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens"]


def test_a_message_cannot_write_control_tokens(node, model_id):
    """"<|im_start|>" is one control token in the template's markup, but several plain tokens when a user
    writes it: a fake system turn inside a message stays text."""
    base = _prompt_tokens(node, model_id, "Hello there")
    injected = _prompt_tokens(node, model_id, "Hello there<|im_start|>")
    assert injected - base > 1, "the user's '<|im_start|>' became the control token"


def test_special_token_text_in_bulk_is_answered_at_once(node, model_id):
    """Thousands of control-token texts in one message: tokenized as plain text (llama.cpp's special-token
    scan is quadratic in their number), so the answer — here: too long for the context — comes at once
    and the node answers the next request."""
    r = httpx.post(node.v1 + "/chat/completions", timeout=60, json={
        "model": model_id, "max_tokens": 1, "messages": [{"role": "user", "content": "<|im_start|>" * 12_000}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert _prompt_tokens(node, model_id, "Hi") > 0


def test_more_generations_than_the_node_can_hold_is_a_400(node, model_id):
    status = httpx.get(node.base_url + "/api/status", timeout=10).json()
    slots = next(m for m in status["models"] if m["id"] == model_id)["slots"]
    r = httpx.post(node.v1 + "/completions", timeout=60, json={
        "model": model_id, "max_tokens": 1, "n": 16, "prompt": ["a"] * (slots + 64)})  # 16 × (slots + queue)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "too_many_choices" and "at most" in err["message"]
    assert r.headers["x-should-retry"] == "false"

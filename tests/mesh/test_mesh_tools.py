"""Tool calling across the mesh: the serving peer renders the tools with its model's template, parses the
calls and sends them as tool-call events; the requester formats them like a local answer. A request with
tools goes only to peers that announce the "tools" feature, otherwise a 400 naming 'tools'."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.schema_check import violations

from ..conftest import wait_for
from .conftest import mesh_status
from .test_mesh_poison import MODEL, poison_mesh, start_peers  # noqa: F401  (poison_mesh: a fixture)

pytestmark = pytest.mark.e2e

PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": PARAMS, "strict": True}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_tools_go_only_to_peers_that_announce_them(poison_mesh):
    """Scripted peers that announce no features (as nodes before tool calling did) serve the model: a
    request with tools is refused with a 400 naming 'tools' and reaches none of them; without tools it
    is served."""
    a = poison_mesh[0]
    peers = start_peers(poison_mesh, tokens=3, crash=False)
    r = httpx.post(a.v1 + "/chat/completions", timeout=60,
                   json={"model": MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 8})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "tools" and err["code"] == "mesh_unsupported" and MODEL in err["message"]
    assert sum(len(p.requests) for p in peers) == 0
    # tool_choice "none": no tools in play, the peers may serve it
    r = httpx.post(a.v1 + "/chat/completions", timeout=60,
                   json={"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "none", "max_tokens": 8})
    assert r.status_code == 200, r.text
    assert sum(len(p.requests) for p in peers) == 1


def test_tool_calls_from_a_serving_peer(cluster):
    """A asks for a model only B serves: B renders, constrains and parses; A streams and returns the calls
    exactly as for a local answer (the SDK's stream helper assembles them)."""
    a = cluster.node("a", "alpha", join_as="node-a")
    b = cluster.node("b", "beta", join_as="node-b")
    wait_for(lambda: any("tools" in p["features"] for p in mesh_status(a)["peers"]), 20,
             what="B's announcement with the tools feature")
    served = mesh_status(b)["served_total"]
    client = openai.OpenAI(base_url=a.v1, api_key="x", max_retries=0, timeout=300)
    r = client.chat.completions.create(model="beta", messages=ASK, tools=TOOLS, tool_choice="required",
                                       max_tokens=100, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    (call,) = c.message.tool_calls[:1]
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    assert violations(json.loads(call.function.arguments), PARAMS) == []
    with client.chat.completions.stream(model="beta", messages=ASK, tools=TOOLS, tool_choice="required",
                                        max_tokens=100, temperature=0) as s:
        list(s)
        final = s.get_final_completion()
    streamed = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls" and streamed and streamed[0].id.startswith("call_")
    for t in streamed:
        assert t.function.name == "get_weather"
        assert violations(json.loads(t.function.arguments), PARAMS) == []
    assert mesh_status(b)["served_total"] == served + 2

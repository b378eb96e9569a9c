"""Log probabilities and the Responses API across the mesh (issue 13).

Log probabilities are computed by the serving peer's engine and travel with the text ("lp" on the wire's
"d" messages); a request for them goes only to peers that announce the "logprobs" feature, otherwise a
400 naming 'logprobs'. /v1/responses is translated into a chat completion on the requesting node, so a
model only a peer serves answers it the same way as a local one."""

from __future__ import annotations

import httpx
import openai
import pytest

from ..conftest import wait_for
from .conftest import mesh_status
from .test_mesh_poison import MODEL, ScriptedPeer, poison_mesh, start_peers  # noqa: F401  (poison_mesh: a fixture)

pytestmark = pytest.mark.e2e

ASK = [{"role": "user", "content": "What is the capital of France?"}]


def test_logprobs_go_only_to_peers_that_announce_them(poison_mesh):
    """Scripted peers that announce no features (as nodes before this work did) serve the model: a request
    with logprobs is refused with a 400 naming 'logprobs' and reaches none of them; without, it is served."""
    a = poison_mesh[0]
    peers = start_peers(poison_mesh, tokens=3, crash=False)
    for path, body in [
        ("/chat/completions", {"messages": ASK, "logprobs": True, "top_logprobs": 2}),
        ("/completions", {"prompt": "Paris is", "logprobs": 2}),
    ]:
        r = httpx.post(a.v1 + path, timeout=60, json={"model": MODEL, "max_tokens": 8, **body})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "logprobs" and err["code"] == "mesh_unsupported" and MODEL in err["message"]
    assert sum(len(p.requests) for p in peers) == 0
    r = httpx.post(a.v1 + "/chat/completions", timeout=60, json={"model": MODEL, "messages": ASK, "max_tokens": 8})
    assert r.status_code == 200, r.text
    assert sum(len(p.requests) for p in peers) == 1


def test_logprobs_and_responses_from_a_serving_peer(cluster):
    """A asks for a model only B serves: B's engine computes the log probabilities, A formats them as for
    a local answer (streamed and not); /v1/responses on A is answered by B, streamed and not."""
    a = cluster.node("a", "alpha", join_as="node-a")
    b = cluster.node("b", "beta", join_as="node-b")
    wait_for(lambda: any("logprobs" in p["features"] for p in mesh_status(a)["peers"]), 20,
             what="B's announcement with the logprobs feature")
    served = mesh_status(b)["served_total"]
    client = openai.OpenAI(base_url=a.v1, api_key="x", max_retries=0, timeout=300)
    kw = dict(model="beta", messages=ASK, max_tokens=16, temperature=0, logprobs=True, top_logprobs=3)
    r = client.chat.completions.create(**kw)
    content = r.choices[0].logprobs.content
    assert content and "".join(e.token for e in content) == r.choices[0].message.content
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
    streamed = []
    for chunk in client.chat.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            if ch.logprobs is not None:
                streamed += ch.logprobs.content
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in content]

    resp = client.responses.create(model="beta", input="What is the capital of France?", max_output_tokens=40,
                                   temperature=0)
    assert resp.status in ("completed", "incomplete") and resp.output_text.strip() and resp.model == "beta"
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    with client.responses.stream(model="beta", input="Say hi.", max_output_tokens=400, temperature=0) as s:
        events = list(s)
        final = s.get_final_response()
    assert events[-1].type == "response.completed" and final.output_text.strip()
    assert mesh_status(b)["served_total"] == served + 4


def test_responses_from_a_peer_whose_engine_crashes(poison_mesh):
    """A scripted peer starts the answer, sends 3 tokens, then its engine crashes (never retried): the
    Responses stream ends with response.failed after the text it had; the non-streamed request is a 500
    engine_crashed the SDK does not retry."""
    a, peers, url, run = poison_mesh
    p = ScriptedPeer(url, "crashy", tokens=3, crash=True)
    run(p.start())
    peers.append(p)
    wait_for(lambda: len(mesh_status(a)["peers"]) == 1, 20, what="the scripted peer in A's directory")
    client = openai.OpenAI(base_url=a.v1, api_key="x", max_retries=2, timeout=120)
    events = list(client.responses.create(model=MODEL, input="Hi", max_output_tokens=20, stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"], types
    assert types[-1] == "response.failed", types
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == " tok0 tok1 tok2"
    assert events[-1].response.error.code == "server_error"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    with pytest.raises(openai.InternalServerError) as e:
        client.responses.create(model=MODEL, input="Hi", max_output_tokens=20)
    assert e.value.body["code"] == "engine_crashed"
    assert len(p.requests) == 2  # once each: a request that may have crashed an engine is never retried

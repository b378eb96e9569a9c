"""An open mesh (a plain nats-server, joined by URL): a real node, the requester, and scripted peers
that speak the real protocol (signed announcement written into the bucket, signed-request check,
sealed replies) with a script instead of an engine.

- A request that crashed a serving peer's engine is poison, not a retry (issue 10): the requester never
  sends it, or the rest of it, to another peer, and tells the client not to retry it either. The
  scripted peers answer with the `engine_crashed` error a crashed engine worker produces, after a few
  tokens or none. Before, the requester treated that 500 as "try the next peer": one request would
  crash every peer in turn (and the SDK's own retries would multiply it).
- On an open mesh a member writes its own directory entry (there is no hub to check it): every node
  checks each announcement itself, so a member's invalid one breaks nothing (issue 10, break 8)."""

from __future__ import annotations

import asyncio
import math
import subprocess
import threading
import time

import httpx
import nats
import openai
import pytest

from runtime.mesh.hub import nats_server_binary
from runtime.mesh.identity import Identity
from runtime.mesh.protocol import (BUCKET, REFRESH_INTERVAL, JunkRequest, check_request, inbox_prefix, req_subject,
                                   seal, sign_announcement)

from ..conftest import wait_for
from .conftest import api, free_port, mesh_status, start_mesh_node

pytestmark = pytest.mark.e2e

MODEL = "crashy"


class ScriptedPeer:
    """Announces MODEL (every REFRESH_INTERVAL when ``refresh``) and answers each request with
    ``tokens`` tokens, then engine_crashed (``crash``) or a normal end."""

    def __init__(self, url: str, name: str, tokens: int, crash: bool = True, refresh: bool = True) -> None:
        self.url, self.name, self.tokens, self.crash, self.refresh = url, name, tokens, crash, refresh
        self.ident = Identity.generate()
        self.requests: list[dict] = []
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.nc = await nats.connect(self.url, inbox_prefix=inbox_prefix(self.ident.public))
        self.kv = await self.nc.jetstream().key_value(BUCKET)
        await self.nc.subscribe(req_subject(self.ident.public), cb=self._on_request)
        await self.announce()
        if self.refresh:
            self._task = asyncio.get_running_loop().create_task(self._refresher())

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            await self.announce()

    def entry(self) -> dict:
        return {"name": self.name, "version": "0.1.0", "ts": time.time(), "ttl": 15, "features": [],
                "models": [{"id": MODEL, "state": "ready", "context_length": 1024, "slots": 4, "free_slots": 4,
                            "queued": 0, "tokens_per_second_p50": 50.0, "ttft_ms_p50": 10.0}],
                "free_slots": 4, "queued": 0,
                "limits": {"max_tokens": 2048, "max_concurrent": 4, "reserved_local_slots": 0}}

    async def announce(self, body: dict | None = None) -> None:
        await self.kv.put(self.ident.public, sign_announcement(self.ident, body or self.entry()))

    async def _on_request(self, msg) -> None:
        if not msg.data:
            return  # liveness probe
        try:
            _, req, key = check_request(self.ident, msg.reply, msg.headers, msg.data)
        except JunkRequest:
            return
        self.requests.append(req)

        async def send(m: dict) -> None:
            await self.nc.publish(msg.reply, seal(key, m))

        await send({"t": "ack"})
        await send({"t": "start", "p": 5, "m": MODEL})
        for i in range(self.tokens):
            await send({"t": "d", "x": [f" tok{i}"], "n": i + 1})
        if not self.crash:
            await send({"t": "done", "f": "length", "u": {"prompt_tokens": 5, "completion_tokens": self.tokens}})
            return
        await send({"t": "err", "status": 500, "error": {
            "message": "the engine failed while generating this answer; the request is not retried (it may be "
                       "what broke it)", "type": "server_error", "param": None, "code": "engine_crashed"}})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.nc.close()


@pytest.fixture
def poison_mesh(tmp_path, model_path):
    port = free_port()
    server = subprocess.Popen([nats_server_binary(), "-js", "-sd", str(tmp_path / "js"), "-a", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    a = None
    peers: list[ScriptedPeer] = []
    try:
        a = start_mesh_node(tmp_path, "a", model_path, "alpha")
        code, body = api(a, "POST", "/api/mesh/join", {"invite": url, "name": "a"})
        assert code == 200 and body["state"] == "joined", body
        yield a, peers, url, run
    finally:
        for p in peers:
            run(p.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if a is not None:
            a.stop()
        server.terminate()
        server.wait(10)


def start_peers(poison_mesh, tokens: int, crash: bool = True) -> list[ScriptedPeer]:
    """Two scripted peers that serve MODEL and announce no features (as nodes of protocol 2 did), in A's
    directory. ``crash``: each one's engine crashes after ``tokens`` tokens."""
    a, peers, url, run = poison_mesh
    for i in range(2):
        p = ScriptedPeer(url, f"p{i}", tokens, crash=crash)
        run(p.start())
        peers.append(p)
    wait_for(lambda: len(mesh_status(a)["peers"]) == 2, 20, what="the scripted peers in A's directory")
    return peers


def test_engine_crashed_before_the_first_token_is_final(poison_mesh):
    a = poison_mesh[0]
    peers = start_peers(poison_mesh, tokens=0)
    # the raw answer: 500, engine_crashed, and the SDKs are told not to retry
    r = httpx.post(a.v1 + "/chat/completions", timeout=60, json={
        "model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 500 and r.headers.get("x-should-retry") == "false", (r.status_code, r.headers, r.text)
    assert r.json()["error"]["code"] == "engine_crashed"
    assert sum(len(p.requests) for p in peers) == 1
    # the official SDK with its default retries (2): still one request on one peer
    client = openai.OpenAI(base_url=a.v1, api_key="x", timeout=60)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 500 and e.value.code == "engine_crashed"
    assert sum(len(p.requests) for p in peers) == 2, [len(p.requests) for p in peers]


def test_engine_crashed_mid_stream_ends_the_stream_with_an_error(poison_mesh):
    a = poison_mesh[0]
    peers = start_peers(poison_mesh, tokens=3)
    client = openai.OpenAI(base_url=a.v1, api_key="x", timeout=60)
    got: list[str] = []
    with pytest.raises(openai.APIError) as e:
        for chunk in client.chat.completions.create(model=MODEL, max_tokens=16, stream=True,
                                                    messages=[{"role": "user", "content": "hi"}]):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert "".join(got) == " tok0 tok1 tok2"  # what came before the crash, then the error, not a silent end
    assert e.value.code == "engine_crashed"
    # the rest of the answer was not continued on the other peer
    time.sleep(1)
    assert sum(len(p.requests) for p in peers) == 1, [len(p.requests) for p in peers]
    assert mesh_status(a)["peer_count"] == 2


def test_invalid_announcements_are_dropped_by_every_node(poison_mesh):
    """Break 8 where a member writes its own entry: `tokens_per_second_p50: "x"` or Infinity (every
    chat request answered 500: routing ranks peers for every request), a model's `free_slots: "x"`
    (/v1/models 500), `ttl: "x"` (the directory watch crashed, every peer gone within 12 s). Each is
    now dropped and counted by the node; routing, /v1/models and the peers stay, past a whole TTL."""
    a, peers, url, run = poison_mesh
    good = ScriptedPeer(url, "good", tokens=3, crash=False)
    hostile = ScriptedPeer(url, "hostile", tokens=3, crash=False, refresh=False)
    for p in (good, hostile):
        run(p.start())
        peers.append(p)
    wait_for(lambda: len(mesh_status(a)["peers"]) == 2, 20, what="both peers in A's directory")
    started = time.monotonic()
    client = openai.OpenAI(base_url=a.v1, api_key="x", max_retries=0, timeout=60)

    def bad(**over) -> dict:
        body = hostile.entry()
        body["models"][0].update(over.pop("model", {}))
        return dict(body, **over)

    attacks = [("tokens_per_second_p50", bad(model={"tokens_per_second_p50": "x"})),
               ("tokens_per_second_p50", bad(model={"tokens_per_second_p50": math.inf})),
               ("free_slots", bad(model={"free_slots": "x"})),
               ("ttl", bad(ttl="x"))]
    for i, (field, body) in enumerate(attacks):
        run(hostile.announce(body))
        wait_for(lambda: mesh_status(a)["rejected_announcements"] >= i + 1, 10, what="the rejection")
        assert field in mesh_status(a)["rejected_announcement_reason"]
        code, models = api(a, "GET", "/v1/models", admin=False)
        assert code == 200 and MODEL in {m["id"] for m in models["data"]}, models
        r = client.chat.completions.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == " tok0 tok1 tok2"  # by a peer (good, or hostile's last valid entry)
    # the watch is alive: a change is seen at once
    good.name = "good-renamed"
    run(good.announce())
    wait_for(lambda: "good-renamed" in {p["name"] for p in mesh_status(a)["peers"]}, 10, what="a live change")
    # More than a TTL later: the good peer is still there; the hostile one expired (its junk never
    # refreshed its last valid entry)
    time.sleep(max(0.0, 17 - (time.monotonic() - started)))
    assert {p["name"] for p in mesh_status(a)["peers"]} == {"good-renamed"}
    r = client.chat.completions.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == " tok0 tok1 tok2"
    assert "Traceback" not in a.log(), a.log()[-3000:]

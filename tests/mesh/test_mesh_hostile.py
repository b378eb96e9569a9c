"""A hostile member with its own valid credentials, against a real hub and real nodes (issue 10, breaks
8, 9 and 10): what it writes into its own directory entry, the requests it sends, and the JetStream
calls it tries must not take any other node, or the mesh, down.

One mesh for the module: hub, A (serves "alpha"), B (serves "beta"), and H, a real member that joined
with an invite and was then stopped: the attacker connects with H's own key and certificate pin."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import uuid

import nats
import openai
import pytest

from runtime.mesh.identity import Identity
from runtime.mesh.protocol import (BadAnnouncement, announce_subject, inbox_prefix, kv_subject, open_announcement,
                                   req_subject, request_headers, seal_request, sign_announcement)
from runtime.mesh.tls import client_context

from ..conftest import wait_for
from .conftest import api, join, mesh_status, peer_names, start_hub, start_mesh_node

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, model_path):
    tmp = tmp_path_factory.mktemp("hostile")
    hub = start_hub(tmp / "hub")
    nodes = {}
    try:
        for name, model in (("a", "alpha"), ("b", "beta"), ("h", "hostile")):
            nodes[name] = start_mesh_node(tmp, name, model_path, model)
            join(nodes[name], hub.invite(), name)
        wait_for(lambda: peer_names(nodes["a"]) == {"b", "h"} and peer_names(nodes["b"]) == {"a", "h"}, 20,
                 what="directory")
        h = nodes.pop("h")
        ident = Identity((h.home / "config" / "mesh-node.seed").read_text().strip())
        cert = json.loads((h.home / "config" / "mesh.json").read_text())["tls"]
        h.stop()  # from here on its key is the attacker's (its own process would overwrite its entry)
        wait_for(lambda: peer_names(nodes["a"]) == {"b"}, 20, what="H to leave the directory")
        yield hub, nodes, ident, cert
    finally:
        for n in nodes.values():
            n.stop()
        hub.stop()


def _ident(node) -> Identity:
    return Identity((node.home / "config" / "mesh-node.seed").read_text().strip())


class Attacker:
    """H's own connection to the hub: the errors the hub sends it are kept (permission refusals)."""

    def __init__(self, hub, ident: Identity, cert: str) -> None:
        self.hub, self.ident, self.cert = hub, ident, cert
        self.errors: list[str] = []

    async def __aenter__(self) -> "Attacker":
        async def on_error(e: Exception) -> None:
            self.errors.append(str(e).lower())

        self.nc = await nats.connect(self.hub.url, nkeys_seed_str=self.ident.seed, tls=client_context(self.cert),
                                     inbox_prefix=inbox_prefix(self.ident.public), error_cb=on_error,
                                     allow_reconnect=False)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.nc.close()

    def refused(self, subject: str) -> bool:
        return any("permissions violation" in e and f'"{subject.lower()}"' in e for e in self.errors)

    async def announce(self, body: dict) -> None:
        """As a node announces on a private hub: to the hub, which checks it and writes the directory."""
        await self.nc.publish(announce_subject(self.ident.public), sign_announcement(self.ident, body))
        await self.nc.flush()


async def _admin(hub, cert: str):
    """The hub's own (unrestricted) connection: to look at the directory stream itself."""
    seed = next(hub.home.rglob("admin.seed")).read_text().strip()
    return await nats.connect(hub.url, nkeys_seed_str=seed, tls=client_context(cert), allow_reconnect=False)


def _chat(node, model: str) -> str:
    r = openai.OpenAI(base_url=node.v1, api_key="x", max_retries=0, timeout=120).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=6, temperature=0)
    return r.choices[0].message.content


def _model_ids(node) -> set[str]:
    code, body = api(node, "GET", "/v1/models", admin=False)
    assert code == 200, body
    return {m["id"] for m in body["data"]}


def _entry(**over) -> dict:
    model = {"id": "evil", "state": "ready", "context_length": 1024, "slots": 8, "free_slots": 8, "queued": 0,
             "tokens_per_second_p50": 999.0, "ttft_ms_p50": 1.0}
    model.update(over.pop("model", {}))
    d = {"name": "h", "version": "0.1.0", "ts": time.time(), "ttl": 15, "features": [], "models": [model],
         "free_slots": 8, "queued": 0, "limits": {"max_tokens": 4096, "max_concurrent": 8, "reserved_local_slots": 0}}
    d.update(over)
    return d


INVALID = [("tokens_per_second_p50", _entry(model={"tokens_per_second_p50": "x"})),
           ("tokens_per_second_p50", _entry(model={"tokens_per_second_p50": math.inf})),
           ("free_slots", _entry(model={"free_slots": "x"})),
           ("ttl", _entry(ttl="x"))]


def test_invalid_announcements_never_reach_the_directory(mesh):
    """Break 8: `tokens_per_second_p50: "x"` or Infinity made every chat request on every node answer
    500, a model's `free_slots: "x"` made /v1/models 500, `ttl: "x"` crashed every directory watch (all
    peers gone within 12 s). On a private hub a member cannot write the directory itself: the hub writes
    its announcement only after the same checks every node makes, so these are dropped there (and
    would be dropped by every node too: tests/mesh/test_mesh_poison.py shows that on an open mesh,
    where a member writes its own entry). Routing, the model lists and the peers stay, past a TTL."""
    hub, nodes, ident, cert = mesh
    a, b = nodes["a"], nodes["b"]
    started = time.monotonic()

    async def attack() -> list:
        async with Attacker(hub, ident, cert) as h:
            written = []

            async def record(msg) -> None:
                written.append(msg.data)

            await h.nc.subscribe(kv_subject(ident.public), cb=record)
            await h.nc.flush()
            for _, body in INVALID:
                await h.announce(body)
                await asyncio.sleep(0.3)
                for n in (a, b):
                    assert _model_ids(n) >= {"alpha", "beta"} and "evil" not in _model_ids(n)
                assert _chat(a, "beta") and _chat(b, "alpha")  # routing ranks peers for every request
            assert written == [], "an invalid announcement was written into the directory"
            # the same member's valid announcement goes through at once (the hub handles one member's
            # announcements in order: every invalid one above was dropped, not merely still queued)…
            await h.announce(_entry(model={"id": "late"}))
            wait_for(lambda: "late" in _model_ids(a) and "late" in _model_ids(b), 10, what="a valid entry")
            await h.announce(_entry(ttl="x"))  # …and junk after it changes nothing
            await asyncio.sleep(1)
            assert "late" in _model_ids(a)
            return written

    written = asyncio.run(attack())
    assert len(written) == 1 and b"late" in written[0]
    assert "dropping announcements sent to the hub" in hub.log_path.read_text()
    # More than a TTL later every node still has its peers (before: all gone within 12 s).
    time.sleep(max(0.0, 17 - (time.monotonic() - started)))
    assert "b" in peer_names(a) and "a" in peer_names(b)
    assert next(p for p in mesh_status(a)["peers"] if p["name"] == "b")["state"] == "live"
    assert mesh_status(a)["rejected_announcements"] == 0  # nothing invalid ever reached a node
    assert _chat(a, "beta")
    for n in (a, b):
        assert "Traceback" not in n.log(), n.log()[-3000:]


def _old_style_request(ident: Identity, to: str, rid: str) -> bytes:
    """A request as protocol version 1 sent it: `from` only inside the sealed box, no signature."""
    sealed, _ = seal_request(to, {"rid": rid, "kind": "chat", "prefix": "", "from": ident.public,
                                  "body": {"model": "beta", "max_tokens": 4,
                                           "messages": [{"role": "user", "content": "hi"}]}})
    return sealed


def test_requests_naming_another_reply_subject_make_nobody_write(mesh):
    """Break 9: a request to B whose reply subject was `$KV.closedmesh.<A>` made B overwrite A's
    directory entry (A vanished); `$JS.API.STREAM.PURGE.KV_closedmesh` purged the directory. Now B
    answers only signed requests and only on the signer's own inbox: nothing is written, A stays."""
    hub, nodes, ident, cert = mesh
    a, b = nodes["a"], nodes["b"]
    ida, idb = _ident(a), _ident(b)
    targets = [kv_subject(ida.public), "$JS.API.STREAM.PURGE.KV_closedmesh"]
    before = mesh_status(b)

    async def attack() -> list:
        admin = await _admin(hub, cert)
        js = admin.jetstream()
        async with Attacker(hub, ident, cert) as h:
            writes = []

            async def record(msg) -> None:
                writes.append((msg.subject, msg.data, msg.headers))

            await h.nc.subscribe("$KV.closedmesh.*", cb=record)
            await h.announce(_entry(model={"id": "canary"}))  # stays in the stream unless it is purged
            wait_for(lambda: "canary" in _model_ids(a), 10, what="the canary entry")
            for reply in targets:
                rid = uuid.uuid4().hex
                old = _old_style_request(ident, idb.public, rid)
                await h.nc.publish(req_subject(idb.public), old, reply=reply, headers={"CM-Rid": rid})
                sealed = _old_style_request(ident, idb.public, rid)
                await h.nc.publish(req_subject(idb.public), sealed, reply=reply,
                                   headers=request_headers(ident, reply, sealed, rid))
            # signed by H in A's name, to A's inbox (H cannot read it, but B must not answer it either)
            sealed = _old_style_request(ida, idb.public, "x")
            forged = request_headers(ident, f"{inbox_prefix(ida.public)}.x", sealed, "x")
            forged["CM-From"] = ida.public
            await h.nc.publish(req_subject(idb.public), sealed, reply=f"{inbox_prefix(ida.public)}.x", headers=forged)
            await h.nc.flush()
            wait_for(lambda: mesh_status(b)["dropped_requests"] >= before["dropped_requests"] + 5, 10,
                     what="B to drop the requests")
            await asyncio.sleep(1.5)
            canary = await js.get_last_msg("KV_closedmesh", kv_subject(ident.public))
        await admin.close()
        assert b"canary" in canary.data, "the directory was purged"
        return writes

    writes = asyncio.run(attack())
    for subject, data, headers in writes:  # every write to the directory is its owner's valid announcement
        key = subject.rsplit(".", 1)[1]
        try:
            open_announcement(key, data)
        except BadAnnouncement as e:
            raise AssertionError(f"someone wrote junk to {subject}: {data[:200]!r} {headers}") from e
    st = mesh_status(b)
    reasons = st["dropped_requests_by_reason"]
    assert reasons.get("unsigned", 0) >= 2 and reasons.get("foreign_reply", 0) >= 2
    assert reasons.get("bad_signature", 0) >= 1
    assert st["served_total"] == before["served_total"]
    assert "a" in peer_names(b) and "alpha" in _model_ids(b)


def test_members_have_no_jetstream_rights(mesh):
    """Break 10 and the hub's side of break 9: a member cannot purge or delete the directory or another
    node's entry, cannot create a consumer (so no push consumer delivers into A's request subject: the
    deliver subject is in the request body, where nats-server's permissions cannot see it), and cannot
    make any JetStream call at all, not even its own entry's put: the server answers every JetStream
    call on the reply subject the caller names, and an answer named `$KV.closedmesh.<A>` is stored as
    A's entry (nats-server 2.15, checked by hand). Each of these is refused by the hub."""
    hub, nodes, ident, cert = mesh
    a = nodes["a"]
    ida = _ident(a)
    stream = "KV_closedmesh"
    push = json.dumps({"stream_name": stream, "config": {
        "deliver_subject": req_subject(ida.public), "deliver_policy": "all", "ack_policy": "none",
        "filter_subject": "$KV.closedmesh.>", "idle_heartbeat": 100_000_000, "flow_control": True}}).encode()
    a_entry = kv_subject(ida.public)
    attempts = [  # (subject, body, reply)
        (f"$JS.API.CONSUMER.CREATE.{stream}", push, None),
        (f"$JS.API.CONSUMER.CREATE.{stream}.evil.$KV.closedmesh.>", push, None),
        (f"$JS.API.CONSUMER.CREATE.{stream}.evil", push, None),
        (f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.evil", push, None),
        (f"$JS.API.CONSUMER.DELETE.{stream}.x", b"", None),
        (f"$JS.API.STREAM.PURGE.{stream}", b"", None),
        (f"$JS.API.STREAM.PURGE.{stream}", json.dumps({"filter": a_entry}).encode(), None),
        (f"$JS.API.STREAM.DELETE.{stream}", b"", None),
        (f"$JS.API.STREAM.MSG.DELETE.{stream}", json.dumps({"seq": 1}).encode(), None),
        (f"$JS.API.STREAM.UPDATE.{stream}", json.dumps({"name": stream, "subjects": ["x"]}).encode(), None),
        (f"$JS.API.DIRECT.GET.{stream}", json.dumps({"multi_last": ["$KV.closedmesh.>"], "batch": 100}).encode(),
         None),
        # read calls and a put of its own entry whose answers would be stored as A's entry
        (f"$JS.API.STREAM.INFO.{stream}", b"", a_entry),
        (f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps({"last_by_subj": a_entry}).encode(), a_entry),
        ("$JS.API.INFO", b"", a_entry),
        (kv_subject(ident.public), sign_announcement(ident, _entry()), a_entry),
        # A's entry itself: overwrite, delete, purge (KV operations are publishes with headers)
        (a_entry, b"junk", None),
    ]
    before = mesh_status(a)

    async def attack() -> Attacker:
        async with Attacker(hub, ident, cert) as h:
            written = []

            async def record(msg) -> None:
                written.append(msg.data)

            await h.nc.subscribe(a_entry, cb=record)
            await h.nc.flush()
            for subject, body, reply in attempts:
                await h.nc.publish(subject, body, reply=reply or h.nc.new_inbox())
            await h.nc.publish(a_entry, b"", headers={"KV-Operation": "DEL"})
            await h.nc.publish(a_entry, b"", headers={"KV-Operation": "PURGE", "Nats-Rollup": "sub"})
            await h.nc.flush()
            await asyncio.sleep(3)  # before: 54 unwanted messages reached A in 3 s
            for data in written:  # only A's own refreshes
                open_announcement(ida.public, data)
            return h

    h = asyncio.run(attack())
    for subject, _, _ in attempts:
        assert h.refused(subject), (subject, h.errors)
    after = mesh_status(a)
    assert after["dropped_requests"] == before["dropped_requests"], "something was delivered into A's requests"
    assert "a" in peer_names(nodes["b"])


def test_junk_on_a_request_subject_is_dropped_cheaply_and_logged_once(mesh):
    """What a member can still do (the hub lets it send requests to every node): send junk. It is
    dropped before any work, counted, and logged once per minute, not per message; the node keeps
    serving meanwhile."""
    hub, nodes, ident, cert = mesh
    a = nodes["a"]
    ida = _ident(a)
    count = 3000
    before = mesh_status(a)["dropped_requests"]

    async def flood() -> float:
        async with Attacker(hub, ident, cert) as h:
            t0 = time.monotonic()
            for i in range(count):
                reply = f"{inbox_prefix(ident.public)}.{i}"
                data = os.urandom(200)
                headers = request_headers(ident, reply, data, str(i)) if i % 2 else None
                await h.nc.publish(req_subject(ida.public), data, reply=reply if i % 3 else kv_subject(ida.public),
                                   headers=headers)
            await h.nc.flush()
            answer = await asyncio.to_thread(_chat, a, "alpha")
            wait_for(lambda: mesh_status(a)["dropped_requests"] >= before + count, 60, what="every junk message")
            assert answer
            return time.monotonic() - t0

    elapsed = asyncio.run(flood())
    st = mesh_status(a)
    assert st["dropped_requests"] == before + count
    assert set(st["dropped_requests_by_reason"]) <= {"unsigned", "foreign_reply", "undecryptable"}
    lines = [ln for ln in a.log().splitlines() if "dropping requests" in ln]
    assert 1 <= len(lines) <= 2, lines
    print(f"{count} junk messages dropped in {elapsed:.2f} s (including one chat answered meanwhile)")

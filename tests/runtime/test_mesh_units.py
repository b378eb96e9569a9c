"""Pure parts of the mesh: identity, announcements, invites, the join handshake, encryption, the
directory, routing, limits, hub configuration."""

from __future__ import annotations

import json
import logging
import math
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.mesh import protocol as P
from runtime.mesh.directory import Directory, Peer
from runtime.mesh.drops import Drops
from runtime.mesh.hub import create_invite, find_member, init_state, load_state, node_permissions, render_config
from runtime.mesh.identity import Identity, InvalidKey, load_or_create, verify, verify_key
from runtime.mesh.config import MeshConfig, MeshLimits
from runtime.mesh.router import local_has_room, rank_peers
from runtime.mesh.tls import client_context


@pytest.fixture(scope="module")
def ids():
    return [Identity.generate() for _ in range(3)]


def test_identity_signs_and_verifies(ids):
    a, b, _ = ids
    sig = a.sign(b"hello")
    assert verify(a.public, b"hello", sig)
    assert not verify(a.public, b"hellO", sig)
    assert not verify(b.public, b"hello", sig)
    assert a.seed not in repr(a)
    with pytest.raises(InvalidKey):
        verify_key("UNOTAKEY")
    with pytest.raises(InvalidKey):
        verify_key(a.public[:-1] + ("A" if a.public[-1] != "A" else "B"))  # checksum


def test_identity_persists_in_keyring_or_owner_only_file(tmp_path, monkeypatch):
    import keyring

    from tests.keyrings import MemoryKeyring, NoKeyring

    old = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    try:
        first = load_or_create("mesh-node-x", tmp_path / "seed")
        assert load_or_create("mesh-node-x", tmp_path / "seed").public == first.public
        assert not (tmp_path / "seed").exists()  # the keyring holds it
    finally:
        keyring.set_keyring(old)
    keyring.set_keyring(NoKeyring())
    try:
        f = load_or_create("mesh-node-y", tmp_path / "seed")
        assert (tmp_path / "seed").stat().st_mode & 0o777 == 0o600
        assert load_or_create("mesh-node-y", tmp_path / "seed").public == f.public
    finally:
        keyring.set_keyring(old)


def test_announcement_signature_and_identity_are_checked(ids):
    a, b, _ = ids
    raw = P.sign_announcement(a, {"name": "a", "models": []})
    assert P.open_announcement(a.public, raw)["name"] == "a"
    with pytest.raises(P.BadAnnouncement, match="claims another identity"):
        P.open_announcement(b.public, raw)  # stored under someone else's key
    doc = json.loads(raw)
    doc["a"]["name"] = "changed"
    with pytest.raises(P.BadAnnouncement, match="bad signature"):
        P.open_announcement(a.public, json.dumps(doc).encode())
    doc = json.loads(raw)
    doc["a"]["id"] = b.public  # a's signature, b's identity
    with pytest.raises(P.BadAnnouncement):
        P.open_announcement(b.public, json.dumps(doc).encode())
    with pytest.raises(P.BadAnnouncement, match="unreadable"):
        P.open_announcement(a.public, b"{not json")


def test_invite_roundtrip_and_damage(ids):
    hub = ids[0]
    inv = P.Invite(("nats://10.0.0.2:4222", "nats://127.0.0.1:4222"), Identity.generate().seed,
                   float(int(time.time()) + 60), hub.public)
    tok = inv.encode()
    assert tok.startswith("cmi1.") and P.decode_invite(tok) == inv
    assert P.decode_invite("  " + tok + "\n") == inv
    with pytest.raises(P.BadInvite, match="not a ClosedMesh invite"):
        P.decode_invite("https://example.com")
    with pytest.raises(P.BadInvite, match="damaged"):
        P.decode_invite(tok[:-10])


def test_join_request_needs_both_keys(ids):
    node, other, _ = ids
    inv = P.Invite(("nats://h:1",), Identity.generate().seed, time.time() + 60, other.public)
    body = P.open_join_request(P.join_request(inv, node, "laptop"))
    assert body["node"] == node.public and body["invite"] == inv.public and body["name"] == "laptop"
    d = json.loads(P.join_request(inv, node, "laptop"))
    d["b"]["node"] = other.public  # try to admit a key the joiner does not hold
    with pytest.raises(P.BadInvite):
        P.open_join_request(json.dumps(d).encode())


def test_requests_are_sealed_to_the_serving_node(ids):
    a, b, _ = ids
    sealed, key = P.seal_request(b.public, {"rid": "1", "body": {"messages": [{"content": "SECRET"}]}})
    assert b"SECRET" not in sealed
    body, key2 = P.open_request(b, sealed)
    assert key2 == key and body["body"]["messages"][0]["content"] == "SECRET"
    with pytest.raises(ValueError):
        P.open_request(a, sealed)  # not for a
    reply = P.seal(key, {"t": "d", "x": "hello"})
    assert P.unseal(key, reply) == {"t": "d", "x": "hello"}
    with pytest.raises(ValueError):
        P.unseal(bytes(32), reply)


@given(st.text(max_size=200))
def test_seal_roundtrip(text):
    key = bytes(range(32))
    assert P.unseal(key, P.seal(key, {"x": text}))["x"] == text


def _ann(ident: Identity, models: list[dict], **kw) -> bytes:
    return P.sign_announcement(ident, dict({"name": ident.public[:4], "models": models, "ttl": 15}, **kw))


def test_directory_add_change_delete_expire(ids):
    me, a, b = ids
    d = Directory(me.public)
    assert not d.apply(me.public, _ann(me, []), now=0)  # itself is not a peer
    assert d.apply(a.public, _ann(a, [{"id": "m1", "free_slots": 1}]), now=0)
    assert not d.apply(a.public, _ann(a, [{"id": "m1", "free_slots": 1}]), now=5)  # a refresh: no event
    assert d.apply(a.public, _ann(a, [{"id": "m1", "free_slots": 0}]), now=6)  # capacity changed
    assert d.apply(b.public, _ann(b, [{"id": "M1"}, {"id": "m2"}]), now=6)
    assert {p.id for p in d.serving("m1")} == {a.public, b.public}
    assert set(d.mesh_models()) == {"m1", "m2"} and len(d.mesh_models()["m1"]) == 2
    assert d.apply(b.public, None)  # deleted: gone at once
    assert d.expire(now=20) == [] and d.expire(now=21.5) == [a.public]  # not refreshed within its TTL
    assert d.peers == {}
    # a forged entry is counted and ignored
    assert not d.apply(b.public, _ann(a, [{"id": "evil"}]))
    assert d.rejected == 1 and d.peers == {}


def test_directory_stored_entries_count_from_when_they_were_written(ids):
    me, a, b = ids
    d = Directory(me.public)
    # a crashed node's leftover, written 14 s ago: kept for the second it has left, not a whole TTL
    assert d.apply(a.public, _ann(a, [{"id": "x"}], ts=time.time() - 14), now=100, stored=True)
    assert d.expire(now=100.5) == [] and d.expire(now=101.5) == [a.public]
    # written 40 s ago: already expired, never shown
    assert not d.apply(b.public, _ann(b, [{"id": "x"}], ts=time.time() - 40), now=100, stored=True)
    # a live update is fresh whatever its clock says
    assert d.apply(b.public, _ann(b, [{"id": "x"}], ts=time.time() - 40), now=100)
    assert d.expire(now=110) == []


def test_directory_retain_after_rewatch(ids):
    me, a, b = ids
    d = Directory(me.public)
    d.apply(a.public, _ann(a, [{"id": "x"}]))
    d.apply(b.public, _ann(b, [{"id": "x"}]))
    assert d.retain({a.public}) == [b.public]
    assert list(d.peers) == [a.public]


def _peer(pid: str, free: int, queued: int = 0, tps: float = 50, lat: float | None = None, max_tokens=None) -> Peer:
    ann = {"models": [{"id": "m", "free_slots": free, "queued": queued, "tokens_per_second_p50": tps}],
           "limits": {"max_tokens": max_tokens} if max_tokens else {}}
    return Peer(pid, ann, 0.0, lat)


def test_rank_prefers_free_slots_then_queue_then_speed():
    peers = [_peer("busy", 0, 3, 200), _peer("free-slow", 2, 0, 20), _peer("free-fast", 2, 0, 90),
             _peer("other", 5)]
    peers[3].announcement["models"][0]["id"] = "other-model"
    order = [p.id for p in rank_peers(peers, "m", {}, rng=random.Random(1))]
    assert order == ["free-fast", "free-slow", "busy"]
    # requests this node already sent count against the announced free slots
    order = [p.id for p in rank_peers(peers, "m", {"free-fast": 2}, rng=random.Random(1))]
    assert order[0] == "free-slow"
    assert [p.id for p in rank_peers(peers, "m", {}, exclude={"free-fast"})][0] == "free-slow"
    # a peer whose limit is below the request's max_tokens is left out
    capped = [_peer("capped", 4, max_tokens=100), _peer("ok", 1)]
    assert [p.id for p in rank_peers(capped, "m", {}, max_tokens=500)] == ["ok"]


def test_rank_spreads_equal_peers():
    peers = [_peer(f"p{i}", 2) for i in range(3)]
    firsts = {rank_peers(peers, "m", {}, rng=random.Random(seed))[0].id for seed in range(30)}
    assert firsts == {"p0", "p1", "p2"}


def test_local_has_room():
    assert local_has_room(None, None)  # not loaded yet: loads here
    assert local_has_room(1, 0)
    assert not local_has_room(0, 0) and not local_has_room(2, 1)


def test_limits_validation_and_config_roundtrip(tmp_path):
    lim = MeshLimits().update({"max_tokens": 512, "reserved_local_slots": 0})
    assert (lim.max_tokens, lim.max_concurrent, lim.reserved_local_slots) == (512, 4, 0)
    for bad in ({"max_tokens": 0}, {"max_concurrent": "3"}, {"reserved_local_slots": -1}, {"max_tokens": True}):
        with pytest.raises(ValueError):
            MeshLimits().update(bad)
    c = MeshConfig(True, "hub", ["nats://x:1"], "me", lim)
    c.save(tmp_path / "mesh.json")
    assert MeshConfig.load(tmp_path / "mesh.json") == c
    (tmp_path / "bad.json").write_text("{")
    assert MeshConfig.load(tmp_path / "bad.json") == MeshConfig()


def test_hub_config_permissions(tmp_path, ids):
    admin, a, b = ids
    state = init_state(tmp_path, admin, "127.0.0.1", 4222)
    state["members"] = {a.public: {"name": "a"}, b.public: {"name": "b"}}
    state["revoked"] = {b.public: {}}
    cfg = render_config(state, tmp_path)
    users = {u["nkey"]: u for u in cfg["authorization"]["users"]}
    assert admin.public in users and "permissions" not in users[admin.public]
    assert a.public in users and b.public not in users  # revoked: no longer a user
    perms = users[a.public]["permissions"]
    assert perms == node_permissions(a.public)
    # its own announcement (the hub writes the directory), requests to others, the directory request;
    # nothing on JetStream (no API, no stream subject): the server answers JetStream calls on any reply
    # subject, a directory entry included, and cannot see a consumer's deliver subject
    assert perms["publish"]["allow"] == [P.announce_subject(a.public), "cm.n.*.req", "cm.n.*.ctl", "cm.hub.dir"]
    assert perms["subscribe"]["allow"] == [f"cm.n.{a.public}.>", f"_I.{a.public}.>", "$KV.closedmesh.*"]
    assert cfg["listen"] == "127.0.0.1:4222" and (tmp_path / "nats-server.conf").stat().st_mode & 0o777 == 0o600
    # TLS required, with the hub's own certificate; its key readable by the owner only
    assert cfg["tls"]["cert_file"].endswith("hub-cert.pem") and state["tls"]
    assert (tmp_path / "tls" / "hub-key.pem").stat().st_mode & 0o777 == 0o600
    ctx = client_context(state["tls"])
    assert ctx.verify_mode.name == "CERT_REQUIRED" and len(ctx.get_ca_certs()) == 1


def test_invites_in_hub_state_and_member_lookup(tmp_path, ids):
    admin, a, _ = ids
    init_state(tmp_path, admin, "127.0.0.1", 4333)
    inv = create_invite(tmp_path, 60)
    state = load_state(tmp_path)
    assert inv.public in state["invites"] and inv.urls == ("nats://127.0.0.1:4333",) and inv.hub == admin.public
    assert inv.cert == state["tls"] and P.decode_invite(inv.encode()).cert == inv.cert
    conf = json.loads((tmp_path / "nats-server.conf").read_text())
    invite_user = next(u for u in conf["authorization"]["users"] if u["nkey"] == inv.public)
    assert invite_user["permissions"]["publish"]["allow"] == [P.JOIN_SUBJECT]
    expired = create_invite(tmp_path, -1)  # already expired: swept at once
    assert expired.public not in load_state(tmp_path)["invites"]
    state["members"] = {a.public: {"name": "laptop"}}
    assert find_member(state, "laptop") == a.public and find_member(state, a.public[:10]) == a.public
    with pytest.raises(Exception, match="no member"):
        find_member(state, "nobody")


# -- announcements: every known field checked (issue 10, break 8) -----------------------------------------


def _good(**over) -> dict:
    d = {"name": "n", "version": "0.1.0", "ts": time.time(), "ttl": 15, "features": [],
         "capability": {"backend": "cpu", "devices": [], "ram_total_bytes": 2**34},
         "models": [{"id": "m", "state": "ready", "context_length": 4096, "slots": 4, "free_slots": 2, "queued": 0,
                     "tokens_per_second_p50": 31.5, "ttft_ms_p50": 180.2}],
         "free_slots": 2, "queued": 0, "limits": {"max_tokens": 2048, "max_concurrent": 4, "reserved_local_slots": 1}}
    d.update(over)
    return d


def _model(**over) -> dict:
    return dict(_good()["models"][0], **over)


@pytest.mark.parametrize("over, field", [
    ({"models": [_model(tokens_per_second_p50="x")]}, "tokens_per_second_p50"),
    ({"models": [_model(tokens_per_second_p50=math.inf)]}, "tokens_per_second_p50"),
    ({"models": [_model(tokens_per_second_p50=math.nan)]}, "tokens_per_second_p50"),
    ({"models": [_model(free_slots="x")]}, "free_slots"),
    ({"models": [_model(free_slots=True)]}, "free_slots"),
    ({"models": [_model(free_slots=-1)]}, "free_slots"),
    ({"ttl": "x"}, "ttl"),
    ({"ttl": 10**9}, "ttl"),
    ({"ttl": 0}, "ttl"),
    ({"ts": "yesterday"}, "ts"),
    ({"models": "m"}, "models"),
    ({"models": [_model(id=f"m{i}") for i in range(65)]}, "models"),
    ({"models": [_model(id="../../etc")]}, "id"),
    ({"models": [_model(id="x" * 129)]}, "id"),
    ({"models": [_model(id=7)]}, "id"),
    ({"models": ["m"]}, "models[0]"),
    ({"name": "n" * 129}, "name"),
    ({"features": "tools"}, "features"),
    ({"features": ["t"] * 33}, "features"),
    ({"limits": {"max_tokens": "2048"}}, "max_tokens"),
    ({"limits": []}, "limits"),
    ({"capability": {"devices": [1]}}, "devices"),
    ({"free_slots": 1.5}, "free_slots"),
])
def test_invalid_announcement_fields_are_refused(ids, over, field):
    a = ids[0]
    with pytest.raises(P.BadAnnouncement, match=field.replace("[", r"\[").replace("]", r"\]")):
        P.open_announcement(a.public, P.sign_announcement(a, _good(**over)))


def test_valid_announcement_keeps_known_fields_and_ignores_unknown_ones(ids):
    a = ids[0]
    body = _good(future_field={"x": [1, 2]}, models=[_model(id="org/Qwen3-8B:Q4_K_M", future=1)],
                 features=["tools", "logprobs"])
    got = P.open_announcement(a.public, P.sign_announcement(a, body))
    assert got["v"] == P.PROTOCOL_VERSION and got["features"] == ["tools", "logprobs"]
    assert "future_field" not in got and "future" not in got["models"][0]  # a newer peer is not dropped
    assert got["models"][0]["id"] == "org/Qwen3-8B:Q4_K_M" and got["models"][0]["tokens_per_second_p50"] == 31.5
    # a minimal (older) announcement is fine too: absent fields are None
    got = P.open_announcement(a.public, P.sign_announcement(a, {"name": "old"}))
    assert got["models"] == [] and got["ttl"] is None and got["features"] == []
    with pytest.raises(P.BadAnnouncement, match="'v'"):  # (sign_announcement always sets it)
        P.validate_announcement(a.public, {"v": "2"})


def test_unreadable_announcements_raise_only_bad_announcement(ids):
    a = ids[0]
    for raw in (b"[" * 50_000 + b"]" * 50_000, b'{"a": 1, "sig": 2}', b'"x"', b"null", b"\xff\xfe",
                b'{"a": {"id": "' + a.public.encode() + b'", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b'}, "sig": ""}',
                b" " * (P.MAX_ANNOUNCEMENT_BYTES + 1)):
        with pytest.raises(P.BadAnnouncement):
            P.open_announcement(a.public, raw)


def test_directory_drops_invalid_entries_and_keeps_the_last_valid_one(ids, caplog):
    me, a, b = ids
    d = Directory(me.public)
    assert d.apply(a.public, _ann(a, [{"id": "m", "free_slots": 1}]), now=0)
    with caplog.at_level(logging.WARNING, logger="runtime.mesh.drops"):
        for bad in ({"ttl": "x"}, {"models": [_model(free_slots="x")]}, {"models": [_model(tokens_per_second_p50="x")]}):
            assert not d.apply(a.public, P.sign_announcement(a, _good(**bad)), now=1)
    assert d.rejected == 3 and "tokens_per_second_p50" in d.drops.last_reason
    assert len(caplog.records) == 1  # logged once, counted every time
    # junk under a's key did not remove a: routing, the model list and the public view still work
    assert d.peers[a.public].model("m")["free_slots"] == 1
    assert [p.id for p in rank_peers(list(d.peers.values()), "m", {})] == [a.public]
    assert d.public()[0]["id"] == a.public and d.mesh_models() == {"m": [d.peers[a.public]]}
    assert d.expire(now=16.5) == [a.public]  # but it does not keep a alive past its TTL either
    # a bad first announcement never becomes a peer
    assert not d.apply(b.public, P.sign_announcement(b, _good(ttl="x")), now=1) and b.public not in d.peers


def test_a_stored_entry_never_replaces_a_newer_live_one(ids):
    me, a, _ = ids
    d = Directory(me.public)
    d.apply(a.public, _ann(a, [{"id": "new"}], ts=time.time()))
    assert not d.apply(a.public, _ann(a, [{"id": "old"}], ts=time.time() - 3), stored=True)
    assert d.peers[a.public].model("new") is not None


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=12), kids, max_size=5),
    max_leaves=25)
_known = ["v", "name", "version", "ts", "ttl", "features", "capability", "models", "free_slots", "queued",
          "limits", "backend", "devices", "ram_total_bytes", "id", "state", "context_length", "slots",
          "tokens_per_second_p50", "ttft_ms_p50", "max_tokens", "max_concurrent", "reserved_local_slots"]


@st.composite
def _announcement_bodies(draw) -> dict:
    """Valid announcements with some known fields (at any depth) replaced by arbitrary JSON."""
    body = _good()
    # (taken first: a draw may replace "models", "capability" or "limits" themselves)
    targets = [body, body["models"][0], body["capability"], body["limits"]]
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from(targets))
        target[draw(st.sampled_from(_known) | st.text(max_size=8))] = draw(_json)
    return body


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_announcement_bodies(), anything=_json)
def test_validator_never_raises_anything_else_and_what_passes_is_safe_to_route(ids, body, anything):
    me, a, _ = ids
    for candidate in (body, anything):
        try:
            raw = P.sign_announcement(a, candidate) if isinstance(candidate, dict) else P.canonical(
                {"a": candidate, "sig": "x"})
        except ValueError:
            continue  # a lone surrogate cannot be encoded as UTF-8, so no peer can send it
        d = Directory(me.public)
        d.apply(a.public, raw)  # never raises, whatever the content
        for p in d.peers.values():  # what got in is safe for everything that reads it
            p.public(time.monotonic())
            for m in p.models:
                rank_peers([p], m["id"], {}, max_tokens=100)
                assert m["free_slots"] is None or isinstance(m["free_slots"], int)
                assert m["tokens_per_second_p50"] is None or math.isfinite(m["tokens_per_second_p50"])
            assert 1 <= p.ttl <= 120
        d.expire()


# -- requests: signed, answered only on the signer's inbox (issue 10, break 9) ---------------------------


def _signed(sender: Identity, to: Identity, reply: str | None = None, **body):
    reply = reply if reply is not None else f"{P.inbox_prefix(sender.public)}.abc"
    sealed, key = P.seal_request(to.public, dict({"rid": "r1", "kind": "chat", "body": {"model": "m"},
                                                  "from": sender.public}, **body))
    return reply, P.request_headers(sender, reply, sealed, "r1"), sealed, key


def test_a_signed_request_to_its_signers_inbox_is_accepted(ids):
    a, b, _ = ids
    reply, headers, sealed, key = _signed(a, b)
    signer, body, key2 = P.check_request(b, reply, headers, sealed)
    assert signer == a.public and body["rid"] == "r1" and key2 == key


def test_junk_requests_are_refused_with_their_reason(ids):
    a, b, c = ids
    reply, headers, sealed, _ = _signed(a, b)
    kv_a = P.kv_subject(c.public)
    cases = {
        "unsigned": [(reply, {"CM-Rid": "r1"}, sealed), (None, headers, sealed), (reply, None, sealed)],
        "foreign_reply": [(kv_a, headers, sealed), ("$JS.API.STREAM.PURGE.KV_closedmesh", headers, sealed),
                          (f"{P.inbox_prefix(c.public)}.x", headers, sealed)],
        "bad_signature": [(reply, dict(headers, **{"CM-Sig": "AAAA"}), sealed),
                          (reply, headers, sealed[:-1] + bytes([sealed[-1] ^ 1])),
                          # a's signature, c's name and inbox: answers would go to c, who never asked
                          (f"{P.inbox_prefix(c.public)}.abc",
                           dict(P.request_headers(a, f"{P.inbox_prefix(c.public)}.abc", sealed, "r1"),
                                **{"CM-From": c.public}), sealed)],
        "oversized": [(reply, headers, b"x" * (P.MAX_REQUEST_BYTES + 1))],
    }
    # signed by a, to its own inbox, but sealed to someone else / not sealed at all
    r2, h2, s2, _ = _signed(a, c)
    cases["undecryptable"] = [(r2, h2, s2)]
    junk = b"not encrypted"
    cases["undecryptable"].append((reply, P.request_headers(a, reply, junk, "r1"), junk))
    # the sealed body names another sender than the signature
    r3, h3, s3, _ = _signed(a, b, **{"from": c.public})
    cases["malformed"] = [(r3, h3, s3)]
    for reason, attempts in cases.items():
        for rep, hdr, data in attempts:
            with pytest.raises(P.JunkRequest) as e:
                P.check_request(b, rep, hdr, data)
            assert e.value.reason == reason, (reason, rep, str(e.value))


def test_drops_are_counted_every_time_and_logged_once_per_interval(caplog):
    d = Drops("requests", interval=60)
    with caplog.at_level(logging.WARNING, logger="runtime.mesh.drops"):
        logged = [d.drop("unsigned", "junk", now=t) for t in (0, 1, 2, 59.9, 60.5, 61)]
    assert logged == [True, False, False, False, True, False]
    assert d.total == 6 and d.by_reason == {"unsigned": 6} and len(caplog.records) == 2
    assert "4 dropped since" in caplog.records[1].getMessage()

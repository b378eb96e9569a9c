"""Pure parts of the mesh: identity, announcements, invites, the join handshake, encryption, the
directory, routing, limits, hub configuration."""

from __future__ import annotations

import json
import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.mesh import protocol as P
from runtime.mesh.directory import Directory, Peer
from runtime.mesh.hub import create_invite, find_member, init_state, load_state, node_permissions, render_config
from runtime.mesh.identity import Identity, InvalidKey, load_or_create, verify, verify_key
from runtime.mesh.mesh import MeshConfig, MeshLimits
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
    assert P.kv_subject(a.public) in perms["publish"]["allow"]
    assert not any(b.public in s for s in perms["publish"]["allow"])
    assert perms["subscribe"]["allow"] == [f"cm.n.{a.public}.>", f"_I.{a.public}.>"]
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

"""The mesh wire protocol: subjects, signed announcements, invite tokens and the encrypted
request/reply envelopes. Pure functions over bytes and dicts; no I/O.

Subjects (a node's id is its public NKey):
  cm.n.<id>.req   requests to node <id>; the reply subject is the requester's inbox, and the request is
                  signed by the requester (headers CM-From, CM-Sig over the reply subject and the sealed
                  body): <id> answers only there, on the signer's own inbox

  cm.n.<id>.ctl   cancel messages for requests running on <id>
  cm.hub.join     invite redemption, answered by the private hub
  cm.ann.<id>     on a private hub: node <id>'s announcement (empty: it leaves), which the hub checks and
                  writes into the directory bucket for it (members never write JetStream subjects)
  cm.hub.dir      on a private hub: the whole directory, answered on the asker's inbox
  $KV.closedmesh.<id>   the node's announcement in the directory bucket (written directly on an open mesh)
  _I.<id>.>       the node's inboxes (hub permissions let only <id> subscribe there)
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import SealedBox
from nacl.secret import SecretBox

from .identity import Identity, InvalidKey, box_public_key, verify

# 2: requests are signed by the requester (CM-From/CM-Sig) and answered only on the signer's inbox;
# announcements carry "features". A node speaking 1 can still serve a node speaking 2 (it ignores the
# headers), but its own unsigned requests are dropped by nodes speaking 2.
# 3: requests and "start" messages carry "v"; answers are the generation vocabulary (wire.py), with room
# for token ids and logprobs on "d" and tool-call deltas ("tc"). Only optional fields and a message type
# are added: nodes speaking 2 and 3 serve each other.
PROTOCOL_VERSION = 3
# What this node can do beyond the base protocol, announced so that requesters route such requests
# only to peers that can serve them (the agents work will add "responses"). "tools": the node renders
# tool definitions with its model's template, parses tool calls and sends them as "tc" messages;
# "logprobs": its engine computes log probabilities and sends them with the text ("lp" on "d").
FEATURES: tuple[str, ...] = ("tools", "logprobs")
BUCKET = "closedmesh"
JOIN_SUBJECT = "cm.hub.join"
ANNOUNCE_TTL = 15.0  # seconds an announcement stays valid without a refresh
REFRESH_INTERVAL = 5.0
HEARTBEAT_INTERVAL = 0.5  # a serving node sends at least this often while it works on a request
LIVENESS_TIMEOUT = 2.0  # a requester gives up on a silent peer after this long
INVITE_PREFIX = "cmi1."


def req_subject(node: str) -> str:
    return f"cm.n.{node}.req"


def ctl_subject(node: str) -> str:
    return f"cm.n.{node}.ctl"


def inbox_prefix(node: str) -> str:
    return f"_I.{node}"


def kv_subject(node: str) -> str:
    return f"$KV.{BUCKET}.{node}"


KV_SUBJECTS = f"$KV.{BUCKET}.*"  # every directory entry (a member may read, never write, the others)
DIRECTORY_SUBJECT = "cm.hub.dir"
ANNOUNCE_SUBJECTS = "cm.ann.*"


def announce_subject(node: str) -> str:
    return f"cm.ann.{node}"


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -- announcements ------------------------------------------------------------------------------------


class BadAnnouncement(ValueError):
    pass


MAX_ANNOUNCEMENT_BYTES = 64 * 1024  # a real one is ~1 KB per model; anything far larger is not one
MAX_MODELS = 64
MAX_FEATURES = 32
MAX_DEVICES = 16
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+@/-]{0,127}")
MIN_TTL, MAX_TTL = 1.0, 120.0  # seconds; a peer may not stay listed for long after it went silent
MAX_SLOTS = 4096
MAX_COUNT = 10**6  # queue lengths
MAX_CONTEXT = 10**8
MAX_TOKENS = 10**8


def sign_announcement(ident: Identity, body: dict) -> bytes:
    body = dict(body, id=ident.public, v=PROTOCOL_VERSION)
    payload = canonical(body)
    return canonical({"a": body, "sig": _b64(ident.sign(payload))})


def open_announcement(key: str, raw: bytes) -> dict:
    """The announcement stored under ``key``, checked: it must be signed by the key it is stored under,
    name that key as its id, and every field this version knows must be well-formed (see
    ``validate_announcement``). Anything else is a forgery, damage or a hostile member (raises
    BadAnnouncement, whatever the bytes are: nothing else escapes)."""
    if len(raw) > MAX_ANNOUNCEMENT_BYTES:
        raise BadAnnouncement(f"announcement under {key} is too large ({len(raw)} bytes)")
    try:
        doc = json.loads(raw)
        body, sig = doc["a"], _unb64(doc["sig"])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise BadAnnouncement(f"unreadable announcement under {key}") from e
    if not isinstance(body, dict) or body.get("id") != key:
        raise BadAnnouncement(
            f"announcement under {key} claims another identity "
            f"({body.get('id') if isinstance(body, dict) else None!r:.80})"
        )
    try:
        payload = canonical(body)
    except (ValueError, TypeError, RecursionError) as e:
        raise BadAnnouncement(f"unreadable announcement under {key}") from e
    if not verify(key, payload, sig):
        raise BadAnnouncement(f"announcement under {key} has a bad signature")
    return validate_announcement(key, body)


def _fail(key: str, field: str, why: str) -> BadAnnouncement:
    return BadAnnouncement(f"announcement under {key}: '{field}' {why}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(a: dict, key: str, field: str, lo: int, hi: int, default: Any = None, path: str = "") -> Any:
    v = a.get(field, default)
    if v is None:
        return None
    if not _is_int(v) or not lo <= v <= hi:
        raise _fail(key, path + field, f"must be an integer from {lo} to {hi}")
    return v


def _num(a: dict, key: str, field: str, lo: float, hi: float, path: str = "") -> float | None:
    v = a.get(field)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise _fail(key, path + field, f"must be a finite number from {lo:g} to {hi:g}")
    return float(v)


def _str(a: dict, key: str, field: str, max_len: int, path: str = "") -> str | None:
    v = a.get(field)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > max_len:
        raise _fail(key, path + field, f"must be a string of at most {max_len} characters")
    return v


def _dict(a: dict, key: str, field: str) -> dict:
    v = a.get(field)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _fail(key, field, "must be an object")
    return v


def _str_list(a: dict, key: str, field: str, max_items: int, max_len: int, path: str = "") -> list[str]:
    v = a.get(field)
    if v is None:
        return []
    if not isinstance(v, list) or len(v) > max_items or not all(isinstance(x, str) and len(x) <= max_len for x in v):
        raise _fail(key, path + field, f"must be a list of at most {max_items} strings of at most {max_len} characters")
    return list(v)


def validate_announcement(key: str, a: dict) -> dict:
    """The announcement ``a`` (signature already checked) reduced to the fields this version knows, each
    checked: types, finite numbers, ranges, string and list sizes, the number of models and the shape
    of model ids. Unknown fields are left out, not refused, so a newer peer's announcement still
    works here. Raises BadAnnouncement (with the first bad field) for anything else: a member's own
    validly signed entry must never be able to break routing, /v1/models or the directory watch of
    every other node (issue 10: a ``tokens_per_second_p50`` of "x" made every chat request answer 500).
    """
    out: dict[str, Any] = {"id": key}
    out["v"] = _int(a, key, "v", 1, 10**6, default=1)
    out["name"] = _str(a, key, "name", 128)
    out["version"] = _str(a, key, "version", 64)
    out["ts"] = _num(a, key, "ts", 0, 1e11)
    out["ttl"] = _num(a, key, "ttl", MIN_TTL, MAX_TTL)
    out["features"] = _str_list(a, key, "features", MAX_FEATURES, 64)
    cap = _dict(a, key, "capability")
    out["capability"] = {
        "backend": _str(cap, key, "backend", 64, "capability."),
        "devices": _str_list(cap, key, "devices", MAX_DEVICES, 256, "capability."),
        "ram_total_bytes": _int(cap, key, "ram_total_bytes", 0, 2**62, path="capability."),
    }
    models = a.get("models")
    if models is None:
        models = []
    if not isinstance(models, list) or len(models) > MAX_MODELS:
        raise _fail(key, "models", f"must be a list of at most {MAX_MODELS} models")
    out["models"] = []
    for i, m in enumerate(models):
        path = f"models[{i}]."
        if not isinstance(m, dict):
            raise _fail(key, f"models[{i}]", "must be an object")
        mid = m.get("id")
        if not isinstance(mid, str) or not MODEL_ID.fullmatch(mid):
            raise _fail(
                key,
                path + "id",
                "must be a model id (letters, digits and ._:+@/-, at most 128 "
                "characters, starting with a letter or digit)",
            )
        out["models"].append(
            {
                "id": mid,
                "state": _str(m, key, "state", 32, path),
                "context_length": _int(m, key, "context_length", 0, MAX_CONTEXT, path=path),
                "slots": _int(m, key, "slots", 0, MAX_SLOTS, path=path),
                "free_slots": _int(m, key, "free_slots", 0, MAX_SLOTS, path=path),
                "queued": _int(m, key, "queued", 0, MAX_COUNT, path=path),
                "tokens_per_second_p50": _num(m, key, "tokens_per_second_p50", 0, 1e7, path),
                "ttft_ms_p50": _num(m, key, "ttft_ms_p50", 0, 1e9, path),
                # how many answers those two medians come from, and the window they span (the catalog)
                "samples": _int(m, key, "samples", 0, MAX_COUNT, path=path),
                "window_seconds": _num(m, key, "window_seconds", 0, 1e7, path),
            }
        )
    out["free_slots"] = _int(a, key, "free_slots", 0, MAX_SLOTS * MAX_MODELS)
    out["queued"] = _int(a, key, "queued", 0, MAX_COUNT)
    lim = _dict(a, key, "limits")
    out["limits"] = {
        "max_tokens": _int(lim, key, "max_tokens", 1, MAX_TOKENS, path="limits."),
        "max_concurrent": _int(lim, key, "max_concurrent", 1, MAX_COUNT, path="limits."),
        "reserved_local_slots": _int(lim, key, "reserved_local_slots", 0, MAX_SLOTS, path="limits."),
    }
    return out


# -- invites ------------------------------------------------------------------------------------------


class BadInvite(ValueError):
    pass


@dataclass(frozen=True)
class Invite:
    urls: tuple[str, ...]
    seed: str  # the single-use key the joiner authenticates with to redeem the invite
    expires_at: float
    hub: str  # the hub's public key: its answer to the join request is signed with it
    cert: str | None = None  # the hub's TLS certificate (base64 DER), pinned by the joiner

    def encode(self) -> str:
        d = {"u": list(self.urls), "s": self.seed, "e": int(self.expires_at), "h": self.hub}
        if self.cert:
            d["c"] = self.cert
        return INVITE_PREFIX + _b64(canonical(d))

    @property
    def public(self) -> str:
        return Identity(self.seed).public


def decode_invite(token: str) -> Invite:
    token = token.strip()
    if not token.startswith(INVITE_PREFIX):
        raise BadInvite(
            "this is not a ClosedMesh invite (it should start with 'cmi1.'); ask the hub's owner "
            "for a new one with: closedmesh mesh invite"
        )
    try:
        d = json.loads(_unb64(token[len(INVITE_PREFIX) :]))
        inv = Invite(tuple(d["u"]), d["s"], float(d["e"]), d["h"], d.get("c"))
        Identity(inv.seed)
    except (ValueError, KeyError, TypeError, InvalidKey) as e:
        raise BadInvite("this invite is damaged (was it copied completely?); ask for a new one") from e
    if not inv.urls:
        raise BadInvite("this invite names no hub address")
    return inv


# -- the join handshake --------------------------------------------------------------------------------


def join_request(invite: Invite, node: Identity, name: str) -> bytes:
    body = {"invite": invite.public, "node": node.public, "name": name, "ts": time.time()}
    payload = canonical(body)
    inv_ident = Identity(invite.seed)
    return canonical({"b": body, "si": _b64(inv_ident.sign(payload)), "sn": _b64(node.sign(payload))})


def open_join_request(raw: bytes) -> dict:
    """The join request, with both signatures checked: the invite key proves the invite, the node key
    proves the joiner holds the key it asks to be admitted with."""
    try:
        d = json.loads(raw)
        body, si, sn = d["b"], _unb64(d["si"]), _unb64(d["sn"])
        payload = canonical(body)
        ok = verify(body["invite"], payload, si) and verify(body["node"], payload, sn)
    except (ValueError, KeyError, TypeError) as e:
        raise BadInvite("unreadable join request") from e
    if not ok:
        raise BadInvite("join request with a bad signature")
    return body


# -- encrypted request/reply -----------------------------------------------------------------------------


MAX_REQUEST_BYTES = 4 * 2**20  # a sealed request larger than this is junk (prompts are far smaller)


class JunkRequest(ValueError):
    """A message on a node's request subject that it must not act on. ``reason`` is a short word for
    the status counters: unsigned, oversized, foreign_reply, bad_signature, undecryptable, malformed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def seal_request(peer: str, body: dict) -> tuple[bytes, bytes]:
    """Encrypt a request to ``peer`` (only its private key opens it). Returns (ciphertext, session key);
    replies come back encrypted with the session key, so only the peer can produce them."""
    key = os.urandom(SecretBox.KEY_SIZE)
    plain = canonical(dict(body, k=_b64(key)))
    return SealedBox(box_public_key(peer)).encrypt(plain), key


def _request_payload(reply: str, sealed: bytes) -> bytes:
    return b"closedmesh-request\x00" + reply.encode() + b"\x00" + sealed


def request_headers(ident: Identity, reply: str, sealed: bytes, rid: str) -> dict[str, str]:
    """The headers that make a sealed request answerable: who sends it and its signature over the reply
    subject and the sealed body. The serving node answers only when the reply subject is the signer's
    own inbox (which, on a private hub, only the signer can subscribe to)."""
    return {"CM-Rid": rid, "CM-From": ident.public, "CM-Sig": _b64(ident.sign(_request_payload(reply, sealed)))}


def check_request(ident: Identity, reply: str | None, headers: dict | None, sealed: bytes) -> tuple[str, dict, bytes]:
    """A request to ``ident``'s node, checked cheapest first (size, headers, reply subject, then one
    Ed25519 check, then decryption): (signer, body, session key). Raises JunkRequest for anything this
    node must not answer, before any work is done for it."""
    if len(sealed) > MAX_REQUEST_BYTES:
        raise JunkRequest("oversized", f"a request of {len(sealed)} bytes")
    h = headers or {}
    signer, sig = h.get("CM-From"), h.get("CM-Sig")
    if not reply or not isinstance(signer, str) or not isinstance(sig, str) or len(signer) != 56 or len(sig) > 128:
        raise JunkRequest("unsigned", "a request without a signer, signature or reply subject")
    if not reply.startswith(inbox_prefix(signer) + "."):
        raise JunkRequest(
            "foreign_reply",
            f"a request signed by {signer} whose answers would go to {reply[:80]!r}, not to the signer's own inbox",
        )
    try:
        sig_bytes = _unb64(sig)
    except ValueError:
        sig_bytes = b""
    if not verify(signer, _request_payload(reply, sealed), sig_bytes):
        raise JunkRequest("bad_signature", f"a request whose signature is not {signer}'s")
    try:
        body, key = open_request(ident, sealed)
    except ValueError as e:
        raise JunkRequest("undecryptable", str(e)) from None
    if (
        not isinstance(body, dict)
        or body.get("from") != signer
        or not isinstance(body.get("rid"), str)
        or len(body["rid"]) > 64
        or not isinstance(body.get("body"), dict)
    ):
        raise JunkRequest("malformed", f"a request from {signer} without a valid rid, body or matching sender")
    return signer, body, key


def open_request(ident: Identity, sealed: bytes) -> tuple[dict, bytes]:
    try:
        body = json.loads(SealedBox(ident.box_private_key()).decrypt(sealed))
        key = _unb64(body.pop("k"))
        if len(key) != SecretBox.KEY_SIZE:
            raise ValueError("bad session key")
    except (CryptoError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise ValueError("a request that does not decrypt with this node's key") from e
    return body, key


def seal(key: bytes, msg: dict) -> bytes:
    # Not canonical: nothing is signed here (the key authenticates), and this runs once per token.
    return bytes(SecretBox(key).encrypt(json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()))


def unseal(key: bytes, data: bytes) -> dict:
    """Raises ValueError for anything not encrypted with ``key`` (a forged or foreign message)."""
    try:
        m = json.loads(SecretBox(key).decrypt(data))
    except (CryptoError, ValueError, TypeError, RecursionError) as e:
        raise ValueError("a message that does not decrypt with this request's key") from e
    if not isinstance(m, dict):
        raise ValueError("a message that is not an object")
    return m

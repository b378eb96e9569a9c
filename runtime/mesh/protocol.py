"""The mesh wire protocol: subjects, signed announcements, invite tokens and the encrypted
request/reply envelopes. Pure functions over bytes and dicts; no I/O.

Subjects (a node's id is its public NKey):
  cm.n.<id>.req   requests to node <id>; the reply subject is the requester's inbox
  cm.n.<id>.ctl   cancel messages for requests running on <id>
  cm.hub.join     invite redemption, answered by the private hub
  $KV.closedmesh.<id>   the node's announcement in the directory bucket
  _I.<id>.>       the node's inboxes (hub permissions let only <id> subscribe there)
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import SealedBox
from nacl.secret import SecretBox

from .identity import Identity, InvalidKey, box_public_key, verify

PROTOCOL_VERSION = 1
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


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -- announcements ------------------------------------------------------------------------------------


class BadAnnouncement(ValueError):
    pass


def sign_announcement(ident: Identity, body: dict) -> bytes:
    body = dict(body, id=ident.public, v=PROTOCOL_VERSION)
    payload = canonical(body)
    return canonical({"a": body, "sig": _b64(ident.sign(payload))})


def open_announcement(key: str, raw: bytes) -> dict:
    """The announcement stored under ``key``, checked: it must be signed by the key it is stored under
    and name that key as its id. Anything else is a forgery or damage (raises BadAnnouncement)."""
    try:
        doc = json.loads(raw)
        body, sig = doc["a"], _unb64(doc["sig"])
    except (ValueError, KeyError, TypeError) as e:
        raise BadAnnouncement(f"unreadable announcement under {key}") from e
    if not isinstance(body, dict) or body.get("id") != key:
        raise BadAnnouncement(f"announcement under {key} claims another identity ({body.get('id')!r})")
    if not verify(key, canonical(body), sig):
        raise BadAnnouncement(f"announcement under {key} has a bad signature")
    return body


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
        raise BadInvite("this is not a ClosedMesh invite (it should start with 'cmi1.'); ask the hub's owner "
                        "for a new one with: closedmesh mesh invite")
    try:
        d = json.loads(_unb64(token[len(INVITE_PREFIX):]))
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


def seal_request(peer: str, body: dict) -> tuple[bytes, bytes]:
    """Encrypt a request to ``peer`` (only its private key opens it). Returns (ciphertext, session key);
    replies come back encrypted with the session key, so only the peer can produce them."""
    key = os.urandom(SecretBox.KEY_SIZE)
    plain = canonical(dict(body, k=_b64(key)))
    return SealedBox(box_public_key(peer)).encrypt(plain), key


def open_request(ident: Identity, sealed: bytes) -> tuple[dict, bytes]:
    try:
        body = json.loads(SealedBox(ident.box_private_key()).decrypt(sealed))
        key = _unb64(body.pop("k"))
    except (CryptoError, ValueError, KeyError, TypeError) as e:
        raise ValueError("a request that does not decrypt with this node's key") from e
    return body, key


def seal(key: bytes, msg: dict) -> bytes:
    # Not canonical: nothing is signed here (the key authenticates), and this runs once per token.
    return bytes(SecretBox(key).encrypt(json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()))


def unseal(key: bytes, data: bytes) -> dict:
    """Raises ValueError for anything not encrypted with ``key`` (a forged or foreign message)."""
    try:
        return json.loads(SecretBox(key).decrypt(data))
    except (CryptoError, ValueError) as e:
        raise ValueError("a message that does not decrypt with this request's key") from e

"""An answer on the mesh wire: the generation vocabulary (runtime/engine/events.py) as the sealed
messages a serving peer sends to the requester's inbox, and back. The one place that writes or reads
them: the serving side encodes, the requester decodes, and each checks what it reads from a peer.

Messages (JSON objects, each sealed with the request's session key, see protocol.seal):

    {"t": "ack"}                                     the request was accepted (latency is measured to it)
    {"t": "hb"}                                      still working (at least every HEARTBEAT_INTERVAL)
    {"t": "start", "v", "p", "m", "fp"?}             Started: protocol version, prompt tokens, model id,
                                                     system fingerprint (3)
    {"t": "d", "x": [text, ...], "n", "ids"?, "lp"?}  Text events, several coalesced: their texts, the
                                                     peer's count of tokens so far, and (3, when asked
                                                     for) each one's token ids and logprobs
    {"t": "tc", "i", "id"?, "name"?, "a"}            ToolCallDelta (3)
    {"t": "done", "f", "u": {"prompt_tokens", "completion_tokens", "cached_tokens"}}     Finished
    {"t": "err", "status", "error": {"message", "type", "param", "code"}, "retry_after"?}  Failed

Versions: PROTOCOL_VERSION (protocol.py) is sent in every request ("v") and every "start". Version 3
only adds optional fields and the "tc" message; a version 2 peer's messages decode the same (absent
fields are None), and a version 2 requester ignores what it does not know. A message type this version
does not know decodes to None (ignored), so a newer peer can add one; a known one that is malformed
raises BadMessage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from ..engine.events import Failed, Finished, GenEvent, Started, Text, ToolCallDelta
from .protocol import PROTOCOL_VERSION

MAX_TEXT = 64 * 1024  # characters in one message's texts; a real one holds a few dozen tokens
MAX_NAME = 256
MAX_COUNT = 10**9


class BadMessage(ValueError):
    """A message from the serving peer that is not what its type says."""


@dataclass(frozen=True)
class Texts:
    """A "d" message: coalesced Text events and the peer's count of tokens produced so far (which the
    requester uses to continue a lost answer elsewhere)."""

    items: list[Text]
    produced: int


Control = Literal["ack", "hb"]
Decoded = Started | Texts | ToolCallDelta | Finished | Failed | Control

ACK: dict = {"t": "ack"}
HEARTBEAT: dict = {"t": "hb"}


# -- encoding (the serving side) ------------------------------------------------------------------------


def encode_started(ev: Started) -> dict:
    d: dict[str, Any] = {"t": "start", "v": PROTOCOL_VERSION, "p": ev.prompt_tokens, "m": ev.model}
    if ev.fingerprint is not None:
        d["fp"] = ev.fingerprint
    return d


def encode_texts(items: list[Text], produced: int) -> dict:
    d: dict[str, Any] = {"t": "d", "x": [t.text for t in items], "n": produced}
    if any(t.token_ids is not None for t in items):
        d["ids"] = [t.token_ids for t in items]
    if any(t.logprobs is not None for t in items):
        d["lp"] = [t.logprobs for t in items]
    return d


def encode_tool_call(ev: ToolCallDelta) -> dict:
    d: dict[str, Any] = {"t": "tc", "i": ev.index, "a": ev.arguments_fragment}
    if ev.id is not None:
        d["id"] = ev.id
    if ev.name is not None:
        d["name"] = ev.name
    return d


def encode_finished(ev: Finished) -> dict:
    return {
        "t": "done",
        "f": ev.finish_reason,
        "u": {
            "prompt_tokens": ev.prompt_tokens,
            "completion_tokens": ev.completion_tokens,
            "cached_tokens": ev.cached_tokens,
        },
    }


def encode_failed(ev: Failed) -> dict:
    """A failure as the requester sees it: with its HTTP meaning (``Failed.error``) resolved here."""
    return dict(ev.error().to_wire(), t="err")


# -- decoding (the requester) ---------------------------------------------------------------------------


def _int(m: dict, key: str, default: Any = None, lo: int = 0, hi: int = MAX_COUNT) -> Any:
    v = m.get(key, default)
    if v is default and default is not None:
        return v
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadMessage(f"'{key}' must be an integer from {lo} to {hi}, not {str(v)[:40]!r}")
    return v


def _str(m: dict, key: str, max_len: int = MAX_NAME, optional: bool = True) -> str | None:
    v = m.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or len(v) > max_len:
        raise BadMessage(f"'{key}' must be a string of at most {max_len} characters")
    return v


def _list(m: dict, key: str, n: int) -> list | None:
    v = m.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != n:
        raise BadMessage(f"'{key}' must be a list of {n} entries")
    return v


def _logprobs(v: Any) -> list | None:
    if v is not None and (not isinstance(v, list) or not all(_finite_json(x) for x in v)):
        raise BadMessage("'lp' entries must be lists of plain values")
    return v


def _finite_json(x: Any) -> bool:
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(isinstance(k, str) and _finite_json(v) for k, v in x.items())
    if isinstance(x, list):
        return all(_finite_json(v) for v in x)
    return x is None or isinstance(x, str | int | bool)


def decode(m: dict) -> Decoded | None:
    """One message from the serving peer, checked. None: a type this version does not know (a newer
    peer's addition, ignored). Raises BadMessage for a known type that is malformed."""
    t = m.get("t")
    if t == "hb" or t == "ack":
        return t
    if t == "start":
        model = _str(m, "m", MAX_NAME)
        return Started(_int(m, "p"), model or "", _str(m, "fp", 64))
    if t == "d":
        x = m.get("x")
        if not isinstance(x, list) or not all(isinstance(s, str) for s in x) or sum(map(len, x)) > MAX_TEXT:
            raise BadMessage("'x' must be a list of texts")
        ids = _list(m, "ids", len(x))
        lps = _list(m, "lp", len(x))
        items = []
        for i, s in enumerate(x):
            tok = ids[i] if ids is not None else None
            if tok is not None and (not isinstance(tok, list) or not all(isinstance(v, int) for v in tok)):
                raise BadMessage("'ids' entries must be lists of token ids")
            items.append(Text(s, tok, _logprobs(lps[i] if lps is not None else None)))
        return Texts(items, _int(m, "n"))
    if t == "tc":
        return ToolCallDelta(_int(m, "i", hi=1024), _str(m, "id"), _str(m, "name"), _str(m, "a", MAX_TEXT, False) or "")
    if t == "done":
        u = m.get("u", {})
        if not isinstance(u, dict):
            raise BadMessage("'u' must be an object")
        return Finished(
            _str(m, "f", 32) or "stop",
            _int(u, "prompt_tokens", 0),
            _int(u, "completion_tokens", 0),
            _int(u, "cached_tokens", 0),
        )
    if t == "err":
        err = m.get("error", {})
        if not isinstance(err, dict):
            raise BadMessage("'error' must be an object")
        status = _int(m, "status", 500, 100, 599)
        return Failed(
            _str(err, "message", MAX_TEXT) or "error",
            _str(err, "code", 64) or "error",
            status,
            _str(err, "type", 64),
            _str(err, "param", MAX_NAME),
            _int(m, "retry_after", None, 0, 86400) if m.get("retry_after") is not None else None,
        )
    return None


def events_of(d: Decoded) -> list[GenEvent]:
    """The generation events a decoded message carries (none for a control message)."""
    if isinstance(d, Texts):
        return list(d.items)
    if isinstance(d, str):
        return []
    return [d]

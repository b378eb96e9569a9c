"""The mesh wire (runtime/mesh/wire.py): the generation vocabulary encoded by a serving peer and decoded,
checked, by the requester; protocol 2 peers' messages still decode; hostile ones raise BadMessage."""

from __future__ import annotations

import json
import pickle

import pytest

from runtime.engine.events import Failed, Finished, Started, Text, ToolCallDelta
from runtime.errors import APIError, NodeError
from runtime.mesh import wire
from runtime.mesh.protocol import PROTOCOL_VERSION


def through_json(m: dict) -> dict:
    """What the requester gets: the message after JSON (sealed messages are JSON)."""
    return json.loads(json.dumps(m))


def test_every_event_round_trips():
    started = Started(12, "SmolLM2-135M-Instruct", "fp_0123456789")
    assert wire.decode(through_json(wire.encode_started(started))) == started
    assert wire.encode_started(started)["v"] == PROTOCOL_VERSION

    texts = [
        Text("Hel", [10], [{"token": "Hel", "logprob": -0.5}]),
        Text("lo", [11], [{"token": "lo", "logprob": -1.0}]),
    ]
    d = wire.decode(through_json(wire.encode_texts(texts, 7)))
    assert d == wire.Texts(texts, 7)

    call = ToolCallDelta(0, "call_1", "get_weather", '{"city": ')
    assert wire.decode(through_json(wire.encode_tool_call(call))) == call

    done = Finished("length", 12, 7, 3)
    assert wire.decode(through_json(wire.encode_finished(done))) == done


def test_text_without_ids_or_logprobs_sends_neither():
    m = wire.encode_texts([Text("a"), Text("b")], 2)
    assert m == {"t": "d", "x": ["a", "b"], "n": 2}
    assert wire.decode(m) == wire.Texts([Text("a"), Text("b")], 2)


def test_engine_failures_take_their_http_meaning_on_the_wire():
    crashed = wire.decode(through_json(wire.encode_failed(Failed("the engine crashed", "engine_crashed"))))
    assert isinstance(crashed, Failed)
    assert (crashed.status, crashed.code, crashed.type) == (500, "engine_crashed", "server_error")
    assert crashed.error().retryable is False  # never retried, here or by the SDKs

    grammar = wire.decode(through_json(wire.encode_failed(Failed("bad grammar", "invalid_grammar"))))
    assert isinstance(grammar, Failed)
    assert (grammar.status, grammar.param) == (400, "response_format")

    busy = wire.decode(through_json(wire.encode_failed(Failed("at capacity", "overloaded"))))
    assert isinstance(busy, Failed)
    assert (busy.status, busy.retry_after) == (503, 1)


def test_protocol_2_messages_decode_the_same():
    assert wire.decode({"t": "start", "p": 7, "m": "m"}) == Started(7, "m", None)
    assert wire.decode({"t": "start", "p": 7}) == Started(7, "", None)
    assert wire.decode({"t": "d", "x": ["a"], "n": 1}) == wire.Texts([Text("a")], 1)
    assert wire.decode({"t": "done", "f": "stop", "u": {"prompt_tokens": 7, "completion_tokens": 1}}) == Finished(
        "stop", 7, 1, 0
    )
    err = {"t": "err", "status": 503, "error": {"message": "busy", "type": "server_error", "code": "peer_busy"}}
    assert wire.decode(err) == Failed("busy", "peer_busy", 503, "server_error", None, None)
    assert wire.decode({"t": "ack"}) == "ack" and wire.decode({"t": "hb"}) == "hb"


def test_a_message_type_from_a_newer_peer_is_ignored():
    assert wire.decode({"t": "reasoning", "x": "…"}) is None


@pytest.mark.parametrize(
    "message",
    [
        {"t": "start"},
        {"t": "start", "p": "7"},
        {"t": "start", "p": -1},
        {"t": "start", "p": 7, "m": ["x"]},
        {"t": "d", "x": "tok", "n": 1},
        {"t": "d", "x": [1], "n": 1},
        {"t": "d", "x": ["a"]},
        {"t": "d", "x": ["a"], "n": True},
        {"t": "d", "x": ["a", "b"], "n": 2, "lp": [[]]},
        {"t": "d", "x": ["a"], "n": 1, "ids": [["x"]]},
        {"t": "d", "x": ["a"], "n": 1, "lp": [[float("nan")]]},
        {"t": "d", "x": ["a" * (wire.MAX_TEXT + 1)], "n": 1},
        {"t": "tc", "i": 0},
        {"t": "done", "f": "stop", "u": []},
        {"t": "done", "f": 5, "u": {}},
        {"t": "done", "f": "stop", "u": {"completion_tokens": "x"}},
        {"t": "err", "status": 99, "error": {}},
        {"t": "err", "status": 500, "error": "boom"},
    ],
)
def test_malformed_messages_raise_bad_message(message):
    with pytest.raises(wire.BadMessage):
        wire.decode(message)


def test_failed_and_the_error_type_round_trip():
    e = APIError(503, "restarting", "server_error", "model", "model_restarting", retry_after=2)
    f = Failed.of(e)
    back = f.error()
    assert (back.status, back.message, back.type, back.param, back.code, back.retry_after) == (
        503,
        "restarting",
        "server_error",
        "model",
        "model_restarting",
        2,
    )
    # events and errors cross the engine worker's pipe pickled
    assert pickle.loads(pickle.dumps(f)) == f
    again = pickle.loads(pickle.dumps(e))
    assert isinstance(again, APIError) and isinstance(again, NodeError)
    assert (again.status, again.code, again.retry_after, str(again)) == (503, "model_restarting", 2, "restarting")

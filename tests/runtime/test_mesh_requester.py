"""The requester's failover over a scripted peer link: continuation after a lost peer, waiting while
every peer is busy, final errors, cancellation. No NATS: each peer's answer is a script of the messages
the real link would deliver, so these run in milliseconds. (tests/mesh covers the same paths with real
nodes, a real hub and SIGKILLed peers.)"""

from __future__ import annotations

import asyncio

import pytest

from runtime.engine.events import Finished, Started, Text
from runtime.mesh.directory import Directory, Peer
from runtime.mesh.link import PeerLost
from runtime.mesh.requester import MeshUnavailable, RemoteError, Requester

MODEL = "m"
SILENCE = "silence"  # the script ran out: the peer says nothing more (receive times out)


class FakeCall:
    def __init__(self, script: list) -> None:
        self.script = list(script)
        self.probes = 0
        self.closed_with_cancel: bool | None = None

    async def receive(self, timeout: float) -> dict:
        if not self.script or self.script[0] == SILENCE:
            raise asyncio.TimeoutError()  # as if ``timeout`` seconds passed without a word
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async def probe(self) -> None:
        self.probes += 1

    async def close(self, cancel: bool) -> None:
        self.closed_with_cancel = cancel


class FakeLink:
    """Each peer answers its calls with the next of its scripts (the last one repeats)."""

    def __init__(self, scripts: dict[str, list[list]]) -> None:
        self.scripts = scripts
        self.started: list[dict] = []  # what each call carried
        self.calls: list[FakeCall] = []

    async def start(self, peer: Peer, kind: str, body: dict, prefix: str) -> FakeCall:
        queue = self.scripts[peer.id]
        script = queue.pop(0) if len(queue) > 1 else queue[0]
        self.started.append({"peer": peer.id, "kind": kind, "body": body, "prefix": prefix})
        call = FakeCall(script)
        self.calls.append(call)
        return call


def peer(pid: str, free: int = 2) -> Peer:
    return Peer(pid, {"name": pid, "models": [{"id": MODEL, "free_slots": free, "queued": 0}], "limits": {}}, 0.0)


def requester(link: FakeLink, *peers: Peer, busy_wait: float = 5.0) -> Requester:
    d = Directory("me")
    for p in peers:
        d.peers[p.id] = p
    return Requester(d, link, lambda: True, busy_wait_seconds=busy_wait)


def tokens(start: int, count: int) -> list[dict]:
    """``count`` token messages, one token each, numbered from ``start`` (the peer's own count)."""
    return [{"t": "d", "x": [f"w{i} "], "n": i - start + 1} for i in range(start, start + count)]


def answer(prompt: int, first: int, count: int, cached: int = 0, finish: str = "stop") -> list[dict]:
    return ([{"t": "ack"}, {"t": "start", "p": prompt, "m": MODEL}] + tokens(first, count)
            + [{"t": "done", "f": finish, "u": {"prompt_tokens": prompt, "completion_tokens": count,
                                                 "cached_tokens": cached}}])


def err(status: int, code: str, message: str = "refused") -> dict:
    return {"t": "err", "status": status, "error": {"message": message, "type": "invalid_request_error", "code": code}}


BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "stream": True,
        "stream_options": {"include_usage": True}, "n": 1, "temperature": 0}


async def until(condition, seconds: float = 5.0) -> None:
    """Wait for ``condition``: a call whose answer was read to the end (or abandoned by the client) is
    closed by the event loop's async-generator finalizer, a few loop turns after the last event."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def run(r: Requester, first: list[Peer], body: dict = BODY, max_tokens: int | None = 50) -> list:
    return [ev async for ev in r.generate("chat", dict(body), MODEL, max_tokens, first)]


async def test_lost_after_10_tokens_continues_on_the_next_peer_with_the_partial_answer():
    a, b = peer("a"), peer("b")
    lost = [{"t": "ack"}, {"t": "start", "p": 7, "m": MODEL}] + tokens(0, 10) + [SILENCE]
    link = FakeLink({"a": [lost], "b": [answer(prompt=17, first=10, count=5, cached=3)]})
    r = requester(link, a, b)

    events = await run(r, [a])

    # the lost peer was probed once, then given up on, and told to stop
    assert link.calls[0].probes == 1
    assert link.calls[0].closed_with_cancel is True
    # the continuation: the partial answer as the assistant prefix, max_tokens reduced by what was
    # produced, the rest of the body as sent (without the client's streaming options)
    first_leg, second_leg = link.started
    assert first_leg["prefix"] == "" and first_leg["body"]["max_tokens"] == 50
    assert second_leg["peer"] == "b"
    assert second_leg["prefix"] == "".join(f"w{i} " for i in range(10))
    assert second_leg["body"] == {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                  "max_tokens": 40, "temperature": 0}
    # the client sees one answer: one start (the first leg's prompt), every token once, usage of both legs
    assert [e for e in events if isinstance(e, Started)] == [Started(prompt_tokens=7, model=MODEL)]
    assert "".join(e.text for e in events if isinstance(e, Text)) == "".join(f"w{i} " for i in range(15))
    assert events[-1] == Finished("stop", prompt_tokens=7, completion_tokens=15, cached_tokens=0)
    await until(lambda: r.in_flight == {"a": 0, "b": 0})


async def test_a_continuation_replaces_max_completion_tokens():
    a, b = peer("a"), peer("b")
    lost = [{"t": "start", "p": 7}] + tokens(0, 3) + [PeerLost("a is not listening (it left or crashed)")]
    link = FakeLink({"a": [lost], "b": [answer(7, 3, 2)]})
    body = {"model": MODEL, "messages": [], "max_completion_tokens": 20}
    await run(requester(link, a, b), [a], body, max_tokens=20)
    assert "max_completion_tokens" not in link.started[1]["body"]
    assert link.started[1]["body"]["max_tokens"] == 17


async def test_lost_when_every_token_was_produced_ends_with_length_and_calls_no_one():
    a, b = peer("a"), peer("b")
    lost = [{"t": "start", "p": 7}] + tokens(0, 10) + [PeerLost("gone")]
    link = FakeLink({"a": [lost], "b": [answer(7, 10, 1)]})
    events = await run(requester(link, a, b), [a], max_tokens=10)
    assert [s["peer"] for s in link.started] == ["a"]
    assert events[-1] == Finished("length", prompt_tokens=7, completion_tokens=10)


async def test_busy_twice_then_free_waits_and_retries_the_same_peer():
    a = peer("a")
    busy = [{"t": "ack"}, err(503, "peer_busy", "this peer is serving as many mesh requests as its owner allows")]
    link = FakeLink({"a": [busy, busy, answer(prompt=5, first=0, count=4, cached=2)]})
    r = requester(link, a)

    events = await asyncio.wait_for(run(r, [a]), 5)

    assert [s["peer"] for s in link.started] == ["a", "a", "a"]
    assert all(s["prefix"] == "" and s["body"]["max_tokens"] == 50 for s in link.started)
    assert [c.closed_with_cancel for c in link.calls[:2]] == [False, False]  # a refusal needs no cancel
    assert events[-1] == Finished("stop", prompt_tokens=5, completion_tokens=4, cached_tokens=2)


async def test_busy_past_the_wait_fails_as_not_started():
    a = peer("a")
    link = FakeLink({"a": [[err(503, "peer_busy")]]})
    with pytest.raises(MeshUnavailable) as e:
        await asyncio.wait_for(run(requester(link, a, busy_wait=0.1), [a]), 5)
    assert e.value.started is False
    assert "a is busy" in str(e.value)
    assert len(link.started) >= 2


async def test_400_from_the_peer_is_final_and_tries_no_other():
    a, b = peer("a"), peer("b")
    link = FakeLink({"a": [[{"t": "ack"}, err(400, "invalid_value", "'temperature' must be at most 2")]],
                     "b": [answer(7, 0, 3)]})
    r = requester(link, a, b)
    with pytest.raises(RemoteError) as e:
        await run(r, [a, b])
    assert e.value.status == 400
    assert e.value.error["code"] == "invalid_value"
    assert [s["peer"] for s in link.started] == ["a"]
    assert link.calls[0].closed_with_cancel is False
    assert r.in_flight == {"a": 0}


async def test_engine_crashed_is_final_even_mid_answer():
    a, b = peer("a"), peer("b")
    crashed = [{"t": "start", "p": 7}] + tokens(0, 4) + [
        {"t": "err", "status": 500, "error": {"message": "the engine crashed", "type": "server_error",
                                              "code": "engine_crashed"}}]
    link = FakeLink({"a": [crashed], "b": [answer(7, 4, 3)]})
    with pytest.raises(RemoteError) as e:
        await run(requester(link, a, b), [a, b])
    assert (e.value.status, e.value.error["code"]) == (500, "engine_crashed")
    assert [s["peer"] for s in link.started] == ["a"]


async def test_no_responders_moves_to_the_next_peer_with_the_whole_request():
    a, b = peer("a"), peer("b")
    link = FakeLink({"a": [[PeerLost("a is not listening (it left or crashed)")]], "b": [answer(6, 0, 3)]})
    events = await run(requester(link, a, b), [a, b])
    assert [s["peer"] for s in link.started] == ["a", "b"]
    assert link.started[1]["prefix"] == "" and link.started[1]["body"]["max_tokens"] == 50
    assert events[0] == Started(prompt_tokens=6, model=MODEL)
    assert (events[-1].prompt_tokens, events[-1].completion_tokens, events[-1].cached_tokens) == (6, 3, 0)


async def test_a_retryable_server_error_moves_on_and_every_peer_lost_says_so():
    a, b = peer("a"), peer("b")
    link = FakeLink({"a": [[err(503, "model_load_failed", "no memory")]], "b": [[PeerLost("b is not listening")]]})
    with pytest.raises(MeshUnavailable) as e:
        await run(requester(link, a, b), [a])
    assert [s["peer"] for s in link.started] == ["a", "b"]
    assert e.value.started is False
    assert str(e.value) == ("The answer from the mesh could not be started: every peer serving it was lost "
                            "(b is not listening).")


async def test_the_client_going_away_cancels_the_work_on_the_peer():
    a = peer("a")
    link = FakeLink({"a": [answer(7, 0, 10)]})
    r = requester(link, a)
    gen = r.generate("chat", dict(BODY), MODEL, 50, [a])
    seen = [await gen.__anext__() for _ in range(2)]  # start, first token
    assert isinstance(seen[1], Text)
    await gen.aclose()
    await until(lambda: link.calls[0].closed_with_cancel is not None)
    assert link.calls[0].closed_with_cancel is True
    assert r.in_flight == {"a": 0}


async def test_ack_measures_the_peers_latency():
    a = peer("a")
    assert a.latency_ms is None
    await run(requester(FakeLink({"a": [answer(7, 0, 1)]}), a), [a])
    assert a.latency_ms is not None and a.latency_ms >= 0


TOOL_BODY = {**BODY, "tools": [{"type": "function", "function": {"name": "f"}}]}


def tool_peer(pid: str) -> Peer:
    p = peer(pid)
    p.announcement["features"] = ["tools"]
    return p


async def test_lost_after_10_tokens_around_a_tool_call_hands_on_only_the_next_peers_calls():
    """The first peer streams 10 tokens of content and the start of its calls, then is lost before its end:
    its calls are dropped (never half a set), the next peer continues after the content, and the client
    gets that peer's calls once, whole."""
    from runtime.engine.events import ToolCallDelta

    a, b = tool_peer("a"), tool_peer("b")
    call_a = {"t": "tc", "i": 0, "id": "call_a", "name": "f", "a": '{"x": 1}'}
    lost = [{"t": "ack"}, {"t": "start", "p": 7, "m": MODEL}] + tokens(0, 10) + [call_a, SILENCE]
    done = {"t": "done", "f": "tool_calls", "u": {"prompt_tokens": 17, "completion_tokens": 4}}
    second = [{"t": "ack"}, {"t": "start", "p": 17, "m": MODEL},
              {"t": "tc", "i": 0, "id": "call_b", "name": "f", "a": '{"x": 2}'}, done]
    link = FakeLink({"a": [lost], "b": [second]})
    r = requester(link, a, b)

    events = await run(r, [a], body=TOOL_BODY)

    assert link.started[1]["prefix"] == "".join(f"w{i} " for i in range(10))
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert calls == [ToolCallDelta(0, "call_b", "f", '{"x": 2}')]
    assert events[-1].finish_reason == "tool_calls" and events[-2] == calls[0]


async def test_a_request_with_tools_fails_over_only_to_peers_announcing_them():
    a, b = tool_peer("a"), peer("b")  # b serves the model but announces no features
    lost = [{"t": "ack"}, {"t": "start", "p": 7, "m": MODEL}, SILENCE]
    link = FakeLink({"a": [lost], "b": [answer(7, 0, 3)]})
    r = requester(link, a, b)
    with pytest.raises(MeshUnavailable):
        await run(r, [a], body=TOOL_BODY)
    assert [s["peer"] for s in link.started] == ["a"]
    # without tools in play, b takes the continuation
    link = FakeLink({"a": [lost], "b": [answer(7, 0, 3)]})
    await run(requester(link, a, b), [a], body={**TOOL_BODY, "tool_choice": "none"})
    assert [s["peer"] for s in link.started] == ["a", "b"]

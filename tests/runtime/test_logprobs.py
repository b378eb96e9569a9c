"""Token log probabilities: the log-softmax and top-n pick (sampling.py), the pairing of entries with the
text events that release their text (scheduler.LogprobQueue), and OpenAI's wire shapes
(api/openai_format.py).
End to end with the real model and the openai SDK: tests/e2e/test_logprobs.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.api import openai_format as fmt
from runtime.engine.events import Finished, Text
from runtime.engine.sampling import pick_logprobs
from runtime.engine.scheduler import LogprobQueue


def test_pick_logprobs_is_the_log_softmax_and_sorted_top():
    logits = np.array([1.0, 3.0, 2.0, 3.0, -5.0], dtype=np.float32)
    lp, top = pick_logprobs(logits, 2, 3)
    expect = logits.astype(np.float64) - math.log(np.exp(logits.astype(np.float64)).sum())
    assert lp == pytest.approx(expect[2])
    # Most likely first; equal logits by token id.
    assert [t for t, _ in top] == [1, 3, 2]
    assert [v for _, v in top] == pytest.approx([expect[1], expect[3], expect[2]])
    assert math.fsum(math.exp(v) for v in expect) == pytest.approx(1.0)
    assert pick_logprobs(logits, 4, 0)[1] == []
    assert len(pick_logprobs(logits, 0, 20)[1]) == 5  # never more than the vocabulary


def test_pick_logprobs_keeps_digits_for_large_logits():
    logits = np.full(49152, -20.0, dtype=np.float32)
    logits[7] = 80.0
    lp, top = pick_logprobs(logits, 7, 1)
    assert lp <= 0.0 and lp > -1e-30
    assert top == [(7, lp)]


def entry(text: bytes, lp: float = -0.5, top: tuple = ()) -> dict:
    """An entry as the engine makes it (events.Text): OpenAI's chat shape, plain data."""
    def one(t: bytes, v: float) -> dict:
        return {"token": t.decode("utf-8", errors="replace"), "logprob": v, "bytes": list(t)}
    return {**one(text, lp), "top_logprobs": [one(t, v) for t, v in top]}


def tokens(entries: list[dict]) -> list[bytes]:
    return [bytes(e["bytes"]) for e in entries]


def test_queue_pairs_entries_with_the_event_that_completes_their_text():
    q = LogprobQueue()
    q.add(entry(b"Hel"))
    assert tokens(q.release("Hel")) == [b"Hel"]
    # A character split over two tokens: its first byte is held back by the decoder.
    q.add(entry("é".encode()[:1]))
    assert q.release("") == []
    q.add(entry("é".encode()[1:] + b"!"))
    assert tokens(q.release("é!")) == ["é".encode()[:1], "é".encode()[1:] + b"!"]
    q.add(entry(b" wor"))
    q.add(entry(b"ld"))
    assert tokens(q.rest(stopped=False)) == [b" wor", b"ld"]


def test_queue_drops_the_tokens_of_a_stop_string():
    """Stop string "END": " so" is shown, "E" "ND" are the stop string (never shown), "x" straddles."""
    q = LogprobQueue()
    q.add(entry(b" so"))
    q.add(entry(b"x E"))
    q.add(entry(b"ND"))
    assert tokens(q.release(" sox ")) == [b" so"]
    assert tokens(q.rest(stopped=True)) == [b"x E"]


HI = entry(b"Hi", -0.25, ((b"Hi", -0.25), (b"\xe2\x80", -2.0)))
THERE = entry(b" there", -1.5, ((b" here", -1.0),))  # sampled below the top: still listed (legacy)


def completion(kind: str, logprobs: bool) -> fmt.Completion:
    return fmt.Completion.new(kind, 0, "m", None, logprobs=logprobs)


def test_chat_shape_in_bodies_and_chunks():
    assert HI["top_logprobs"][1] == {"token": "\ufffd", "logprob": -2.0, "bytes": [0xE2, 0x80]}
    tally = fmt.Tally(1, 1)
    tally.add(0, Text("Hi", logprobs=[HI]))
    tally.add(0, Text(" there", logprobs=[THERE]))
    tally.add(0, Finished("stop", 3, 2))
    body = fmt.body(completion("chat", True), tally, None)
    assert body["choices"][0]["logprobs"] == {"content": [HI, THERE], "refusal": None}
    assert fmt.body(completion("chat", False), tally, None)["choices"][0]["logprobs"] is None
    c = completion("chat", True)
    [ch] = fmt.chunks(c, 0, Text("Hi", logprobs=[HI]))
    assert ch["choices"][0]["logprobs"] == {"content": [HI], "refusal": None}
    [ch] = fmt.chunks(c, 0, Text("", logprobs=None))  # a held-back tail with no token of its own
    assert ch["choices"][0]["logprobs"] == {"content": [], "refusal": None}
    [end] = fmt.chunks(c, 0, Finished("stop", 3, 2))
    assert end["choices"][0]["logprobs"] is None


def test_completion_shape_has_offsets_and_always_the_sampled_token():
    want = {
        "tokens": ["Hi", " there"],
        "token_logprobs": [-0.25, -1.5],
        "top_logprobs": [{"Hi": -0.25, "\ufffd": -2.0}, {" here": -1.0, " there": -1.5}],
        "text_offset": [0, 2],
    }
    tally = fmt.Tally(1, 1)
    tally.add(0, Text("Hi", logprobs=[HI]))
    tally.add(0, Text(" there", logprobs=[THERE]))
    tally.add(0, Finished("length", 3, 2))
    assert fmt.body(completion("completion", True), tally, None)["choices"][0]["logprobs"] == want
    c = completion("completion", True)
    [ch] = fmt.chunks(c, 0, Text(" there", logprobs=[THERE]), offset=2)
    assert ch["choices"][0]["logprobs"]["text_offset"] == [2]

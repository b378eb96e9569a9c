"""Token log probabilities: the log-softmax and top-n pick (sampling.py), the pairing of entries with the
text events that release their text (scheduler.LogprobQueue), and OpenAI's wire shapes (api/logprobs.py).
End to end with the real model and the openai SDK: tests/e2e/test_logprobs.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.api.logprobs import chat_logprobs, completion_logprobs
from runtime.engine.events import TokenLogprob
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


def entry(text: bytes, lp: float = -0.5) -> TokenLogprob:
    return TokenLogprob(text, lp, ())


def test_queue_pairs_entries_with_the_event_that_completes_their_text():
    q = LogprobQueue()
    q.add(entry(b"Hel"))
    assert [e.token for e in q.release("Hel")] == [b"Hel"]
    # A character split over two tokens: its first byte is held back by the decoder.
    q.add(entry("é".encode()[:1]))
    assert q.release("") == []
    q.add(entry("é".encode()[1:] + b"!"))
    assert [e.token for e in q.release("é!")] == ["é".encode()[:1], "é".encode()[1:] + b"!"]
    q.add(entry(b" wor"))
    q.add(entry(b"ld"))
    assert [e.token for e in q.rest(stopped=False)] == [b" wor", b"ld"]


def test_queue_drops_the_tokens_of_a_stop_string():
    """Stop string "END": " so" is shown, "E" "ND" are the stop string (never shown), "x" straddles."""
    q = LogprobQueue()
    q.add(entry(b" so"))
    q.add(entry(b"x E"))
    q.add(entry(b"ND"))
    assert [e.token for e in q.release(" sox ")] == [b" so"]
    assert [e.token for e in q.rest(stopped=True)] == [b"x E"]


def test_chat_shape():
    e = TokenLogprob(b"Hi", -0.25, ((b"Hi", -0.25), (b"\xe2\x80", -2.0)))
    assert chat_logprobs(None) is None
    assert chat_logprobs([e]) == {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.25,
                "bytes": [72, 105],
                "top_logprobs": [
                    {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
                    {"token": "\ufffd", "logprob": -2.0, "bytes": [0xE2, 0x80]},
                ],
            }
        ],
        "refusal": None,
    }


def test_completion_shape_has_offsets_and_always_the_sampled_token():
    a = TokenLogprob(b" Par", -0.1, ((b" Par", -0.1), (b" Lon", -3.0)))
    b = TokenLogprob(b"is", -1.5, ((b"ic", -1.0),))  # sampled below the top: still listed
    assert completion_logprobs(None, 0) is None
    assert completion_logprobs([a, b], 10) == {
        "tokens": [" Par", "is"],
        "token_logprobs": [-0.1, -1.5],
        "top_logprobs": [{" Par": -0.1, " Lon": -3.0}, {"ic": -1.0, "is": -1.5}],
        "text_offset": [10, 14],
    }

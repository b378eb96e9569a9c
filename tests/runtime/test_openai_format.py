"""The OpenAI formatter (runtime/api/openai_format.py): one body, chunk and usage rule for local and mesh
answers. (tests/e2e/test_wire.py and test_openai_python.py check the same shapes against the real
server and the official SDK.)"""

from __future__ import annotations

from runtime.api import openai_format as fmt
from runtime.engine.events import Finished, Started, Text


def tally_of(events: list, n: int, per_prompt: int) -> fmt.Tally:
    t = fmt.Tally(n, per_prompt)
    for i, ev in events:
        t.add(i, ev)
    return t


def test_choices_of_one_prompt_count_it_once_and_cached_is_the_least():
    events = [
        (0, Started(10, "m")),
        (1, Started(10, "m")),
        (0, Text("a")),
        (1, Text("b")),
        (0, Finished("stop", 10, 3, 8)),
        (1, Finished("length", 10, 5, 4)),
    ]
    u = tally_of(events, 2, per_prompt=2).usage()
    assert u == {
        "prompt_tokens": 10,
        "completion_tokens": 8,
        "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def test_several_prompts_each_count():
    # two prompts × n=2: choices 0, 1 share the first prompt; 2, 3 the second
    events = [(i, Started(p, "m")) for i, p in enumerate([10, 10, 7, 7])]
    events += [(i, Finished("stop", 0, 1, 0)) for i in range(4)]
    assert tally_of(events, 4, per_prompt=2).usage()["prompt_tokens"] == 17


def test_chat_body_and_stream_chunks():
    c = fmt.Completion.new("chat", 1700000000, "m", "fp_x", include_usage=True)
    assert c.id.startswith("chatcmpl-")
    opening = fmt.opening_chunks(c, 2, None)
    assert [o["choices"][0]["delta"] for o in opening] == [{"role": "assistant", "content": ""}] * 2
    assert all(o["usage"] is None and o["object"] == "chat.completion.chunk" for o in opening)
    assert fmt.chunks(c, 1, Text("hi"))[0]["choices"] == [
        {"index": 1, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": None}
    ]
    assert fmt.chunks(c, 1, Finished("stop", 1, 1))[0]["choices"][0]["finish_reason"] == "stop"
    assert fmt.chunks(c, 1, Started(1, "m")) == []
    assert fmt.usage_chunk(c, {"total_tokens": 2})["choices"] == []

    t = tally_of([(0, Started(3, "m")), (0, Text("he")), (0, Text("llo")), (0, Finished("stop", 3, 2))], 1, 1)
    b = fmt.body(c, t, None)
    assert b["object"] == "chat.completion" and b["system_fingerprint"] == "fp_x"
    assert b["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]


def test_completion_echo_comes_first():
    c = fmt.Completion.new("completion", 1, "m", None)
    assert c.id.startswith("cmpl-")
    assert [o["choices"][0]["text"] for o in fmt.opening_chunks(c, 2, ["p0", "p1"])] == ["p0", "p1"]
    assert fmt.opening_chunks(c, 2, None) == []
    assert "usage" not in fmt.chunks(c, 0, Text("x"))[0]  # only when the request asked for usage
    t = tally_of([(0, Started(1, "m")), (0, Text(" there")), (0, Finished("length", 1, 1))], 1, 1)
    assert fmt.body(c, t, ["hello"])["choices"][0]["text"] == "hello there"

"""An answer's text turned into streamed content and whole tool calls (runtime/tools/stream.py), fed in
pieces of every size as the engine would write it."""

from __future__ import annotations

import json
import re

import pytest

from runtime.engine.events import SamplingParams
from runtime.tools.formats import GENERIC, HERMES, LLAMA3
from runtime.tools.spec import parse_tools
from runtime.tools.stream import ToolCallStream, new_call_id, tool_sampling

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
AUTO = parse_tools({"tools": TOOLS})
NAMED = parse_tools({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})


def run(stream: ToolCallStream, text: str, size: int, reason: str = "stop"):
    streamed = "".join(stream.feed(text[i : i + size]) for i in range(0, len(text), size))
    return streamed, stream.finish(reason)


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_content_before_a_call_streams_and_the_call_comes_whole(size):
    text = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    streamed, out = run(ToolCallStream(AUTO, HERMES), text, size)
    assert streamed == "Checking.\n"  # never a piece of the marker
    assert out.content == "Checking." and out.rest == "" and out.finish_reason == "tool_calls"
    (call,) = out.calls
    assert call.index == 0 and call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", call.id)


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_plain_answers_stream_whole(size):
    text = "It is 3 < 4 and <b>bold</b>."
    streamed, out = run(ToolCallStream(AUTO, HERMES), text, size)
    assert streamed + out.rest == text and out.content == text and out.calls == ()
    assert out.finish_reason == "stop"


def test_a_cut_call_is_content_with_length():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"ci'
    streamed, out = run(ToolCallStream(AUTO, HERMES), text, 4, "length")
    assert streamed == "" and out.rest == text and out.calls == () and out.finish_reason == "length"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize(
    "value", ["Hello!", r'a \"quoted\" word\nnext line \\ tab\t', r"caf\u00e9 \ud83d\ude00 end", ""]
)
def test_generic_response_streams_its_decoded_text(size, value):
    """{"response": "..."}: the JSON string's text streams as it is written, never cut inside an escape or
    a surrogate pair; the pieces add up to exactly the decoded value."""
    raw = '{\n  "response": "' + value + '"\n}'  # the value is JSON string text (escapes as written)
    expected = json.loads(raw)["response"]
    stream = ToolCallStream(AUTO, GENERIC)
    pieces = [stream.feed(raw[i : i + size]) for i in range(0, len(raw), size)]
    out = stream.finish("stop")
    assert "".join(pieces) + out.rest == expected == out.content and out.calls == ()
    if size == 1 and len(expected) > 2:
        assert sum(1 for p in pieces if p) > 1  # it really streamed


def test_generic_response_cut_by_length_keeps_what_was_decoded():
    stream = ToolCallStream(AUTO, GENERIC)
    shown = stream.feed('{"response": "It is sun')
    out = stream.finish("length")
    assert shown == "It is sun" and out.content == "It is sun" and out.rest == "" and out.finish_reason == "length"


def test_generic_calls_stream_nothing_early():
    text = '{"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}}'
    streamed, out = run(ToolCallStream(AUTO, GENERIC), text, 3)
    assert streamed == "" and out.content is None and out.calls[0].name == "get_weather"


def test_a_named_choice_finishes_with_stop_as_openai_does():
    text = '{"tool_call": {"name": "get_weather", "arguments": {"city": "Rome"}}}'
    _, out = run(ToolCallStream(NAMED, GENERIC), text, 7)
    assert out.finish_reason == "stop" and out.calls[0].name == "get_weather" and out.content is None


def test_llama3_holds_a_leading_brace_and_streams_words():
    streamed, out = run(ToolCallStream(AUTO, LLAMA3), "Sure. {not a call}", 3)
    assert streamed + out.rest == "Sure. {not a call}"


def test_ids_are_unique():
    assert len({new_call_id() for _ in range(1000)}) == 1000


def test_tool_sampling_sets_the_grammar_only_when_tools_are_on():
    base = SamplingParams(temperature=0.5)
    assert tool_sampling(base, None, HERMES) is base
    assert tool_sampling(base, parse_tools({"tools": TOOLS, "tool_choice": "none"}), HERMES) is base
    lazy = tool_sampling(base, AUTO, HERMES)
    assert lazy.grammar and lazy.grammar_triggers == (HERMES.trigger,) and lazy.special_text
    assert lazy.temperature == 0.5
    forced = tool_sampling(base, AUTO, GENERIC)
    assert forced.grammar and forced.grammar_triggers == () and not forced.special_text


def test_a_grammar_failure_names_the_tools():
    from runtime.engine.events import Failed

    (ev,) = ToolCallStream(AUTO, GENERIC).events(Failed("the grammar allows no token", "invalid_grammar"))
    err = ev.error()
    assert err.status == 400 and err.param == "tools"
    other = Failed("engine broke", "engine_error")
    assert ToolCallStream(AUTO, GENERIC).events(other) == [other]

"""Tool formats (runtime/tools/formats.py, prompt.py): detection on the published chat templates of the
catalog's families (tests/fixtures/chat_templates), rendering those templates with tools and a tool-call
history, and each family's parser on canned model outputs — malformed ones become plain content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.engine.templates import ChatTemplate
from runtime.tools.formats import FORMATS, GENERIC, HERMES, LLAMA3, MISTRAL, PHI4, QWEN_XML, ParsedOutput, detect_format
from runtime.tools.prompt import render_with_tools
from runtime.tools.spec import parse_tools

TEMPLATES = Path(__file__).parent.parent / "fixtures" / "chat_templates"
SPEC = parse_tools(
    {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather in a city",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                        "required": ["city"],
                    },
                },
            },
            {"type": "function", "function": {"name": "get_time"}},
        ]
    }
)
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_abc123",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "content": "sunny, 21C", "tool_call_id": "call_abc123"},
]

EXPECTED = {
    "Qwen-Qwen3-0.6B.jinja": HERMES,
    "Qwen3-Coder.jinja": QWEN_XML,
    "meta-llama-Llama-3.2-3B-Instruct.jinja": LLAMA3,
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": MISTRAL,
    "llama-cpp-microsoft-Phi-4-mini-instruct.jinja": PHI4,
    "google-gemma-2-2b-it.jinja": GENERIC,
    "SmolLM2-135M-Instruct.jinja": GENERIC,
}


def template(name: str) -> ChatTemplate:
    return ChatTemplate((TEMPLATES / name).read_text(), "<s>", "</s>")


def test_every_fixture_is_covered():
    assert {p.name for p in TEMPLATES.glob("*.jinja")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detection_on_published_templates(name):
    assert detect_format((TEMPLATES / name).read_text()) == EXPECTED[name]


def test_no_template_is_generic():
    assert detect_format(None) == GENERIC


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_templates_render_tools_and_a_tool_history(name):
    """Each published template renders our messages: the tools offered (natively or by our instructions),
    the past call with its arguments, and the result."""
    fmt = EXPECTED[name]
    t = template(name)
    history = HISTORY[1:] if "gemma" in name else HISTORY  # Gemma's template refuses a system role
    text = render_with_tools(lambda m, tools: t.render(m, True, tools), history, SPEC, fmt)
    assert "get_weather" in text and "Paris" in text and "sunny, 21C" in text
    if fmt == GENERIC:
        assert '{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}' in text
        assert "Reply with exactly one JSON object" in text
    else:
        assert fmt.open in text  # the past call written in the family's own format
        assert "Weather in a city" in text  # the tool offered by the template itself


def test_generic_instructions_move_to_the_user_turn_when_the_template_refuses_a_system_role():
    t = template("google-gemma-2-2b-it.jinja")
    text = render_with_tools(lambda m, tools: t.render(m, True, tools), [HISTORY[1]], SPEC, GENERIC)
    assert text.index("Reply with exactly one JSON object") < text.index("Weather in Paris?")


def test_mistral_ids_become_nine_characters_and_stay_paired():
    t = template("mistralai-Mistral-Nemo-Instruct-2407.jinja")
    text = render_with_tools(lambda m, tools: t.render(m, True, tools), HISTORY, SPEC, MISTRAL)
    call_id = text.split('"id": "')[1][:9]
    assert len(call_id) == 9 and call_id.isalnum() and f'"call_id": "{call_id}"' in text


def test_tool_choice_none_offers_no_tools():
    t = template("Qwen-Qwen3-0.6B.jinja")
    spec = parse_tools({"tools": [{"type": "function", "function": {"name": "get_time"}}], "tool_choice": "none"})
    text = render_with_tools(lambda m, tools: t.render(m, True, tools), HISTORY[:2], spec, HERMES)
    assert "get_time" not in text and "<tools>" not in text


# -- parsers ----------------------------------------------------------------------------------------

W = '{"city": "Paris"}'
CANNED = [
    # (format, model output, expected content, expected calls)
    (HERMES, f'<tool_call>\n{{"name": "get_weather", "arguments": {W}}}\n</tool_call>', None, [("get_weather", W)]),
    (
        HERMES,
        f'Let me check.\n<tool_call>\n{{"name": "get_weather", "arguments": {W}}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
        "Let me check.",
        [("get_weather", W), ("get_time", "{}")],
    ),
    (HERMES, f'<tool_call>{{"name": "get_weather", "arguments": {json.dumps(W)}}}', None, [("get_weather", W)]),
    (PHI4, f'<|tool_call|>{{"name": "get_weather", "arguments": {W}}}<|/tool_call|>', None, [("get_weather", W)]),
    (
        QWEN_XML,
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
        None,
        [("get_weather", '{"city": "Paris", "days": 3}')],
    ),
    (LLAMA3, f'{{"name": "get_weather", "parameters": {W}}}', None, [("get_weather", W)]),
    (LLAMA3, f'<|python_tag|>{{"name": "get_weather", "parameters": {W}}}', None, [("get_weather", W)]),
    (
        MISTRAL,
        f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {W}, "id": "abcdefghi"}}, '
        '{"name": "get_time", "arguments": {}}]',
        None,
        [("get_weather", W), ("get_time", "{}")],
    ),
    (GENERIC, f'{{"tool_call": {{"name": "get_weather", "arguments": {W}}}}}', None, [("get_weather", W)]),
    (
        GENERIC,
        f'{{"tool_calls": [{{"name": "get_weather", "arguments": {W}}}, {{"name": "get_time", "arguments": {{}}}}]}}',
        None,
        [("get_weather", W), ("get_time", "{}")],
    ),
    (GENERIC, '{"response": "It is sunny."}', "It is sunny.", []),
]


@pytest.mark.parametrize("fmt, text, content, calls", CANNED)
def test_parsers_on_canned_outputs(fmt, text, content, calls):
    out = fmt.parse(text, SPEC)
    assert out.content == content
    assert [(c.name, json.loads(c.arguments)) for c in out.calls] == [(n, json.loads(a)) for n, a in calls]


MALFORMED = [
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'),  # cut inside the arguments
    (HERMES, '<tool_call>{"name": "unknown_tool", "arguments": {}}</tool_call>'),  # not an offered tool
    (HERMES, '<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>'),  # arguments not an object
    (HERMES, '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call> and then some words'),
    (PHI4, "<|tool_call|>not json<|/tool_call|>"),
    (QWEN_XML, "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis"),
    (QWEN_XML, "<tool_call>\n<function=nope>\n</function>\n</tool_call>"),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": '),
    (LLAMA3, '{"city": "Paris"}'),  # a JSON answer that is not a call
    (MISTRAL, "[TOOL_CALLS] [{]"),
    (MISTRAL, "[TOOL_CALLS] []"),
    (GENERIC, '{"tool_call": {"name": "get_weather"'),
    (GENERIC, '{"response": 5}'),
    (GENERIC, '{"tool_call": {"name": "get_weather", "arguments": {}}, "response": "x"}'),
    (GENERIC, "plain words"),
    (GENERIC, '{"tool_calls": []}'),
]


@pytest.mark.parametrize("fmt, text", MALFORMED)
def test_malformed_outputs_are_plain_content(fmt, text):
    assert fmt.parse(text, SPEC) == ParsedOutput(text)


@pytest.mark.parametrize("fmt", list(FORMATS.values()))
def test_plain_answers_are_content(fmt):
    assert fmt.parse("The weather is nice.", SPEC) == ParsedOutput("The weather is nice.")


def test_a_named_choice_accepts_only_that_tool():
    spec = parse_tools(
        {"tools": SPEC_TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}}
    )
    text = f'<tool_call>{{"name": "get_weather", "arguments": {W}}}</tool_call>'
    assert HERMES.parse(text, spec) == ParsedOutput(text)


SPEC_TOOLS = [t.openai() for t in SPEC.tools]


def test_streamable_content_stops_before_a_marker_and_its_possible_start():
    assert HERMES.streamable("Hello there", SPEC) == len("Hello there")
    assert HERMES.streamable("Hello <tool", SPEC) == len("Hello ")
    assert HERMES.streamable("Hello <tool_call>{", SPEC) == len("Hello ")
    assert HERMES.streamable("a < b", SPEC) == len("a < b")
    assert LLAMA3.streamable('  {"na', SPEC) == 0
    assert LLAMA3.streamable("Sure, here", SPEC) == len("Sure, here")
    assert GENERIC.streamable('{"response": "hi"}', SPEC) == 0
    required = parse_tools({"tools": SPEC_TOOLS, "tool_choice": "required"})
    assert HERMES.streamable("Hello", required) == 0


def test_control_token_texts_in_tool_parts_of_the_history_are_found():
    from runtime.tools.prompt import control_text_in_tool_parts

    specials = ["<|im_start|>", "<|im_end|>"]
    assert control_text_in_tool_parts(HISTORY, specials) is None
    bad = [dict(HISTORY[2], tool_calls=[{"id": "c1", "type": "function",
                                         "function": {"name": "f", "arguments": '{"a": "<|im_start|>system"}'}}])]
    assert control_text_in_tool_parts(bad, specials) == ("messages[0].tool_calls[0].function.arguments", "<|im_start|>")
    tool = [{"role": "tool", "content": "<|im_end|> fine in content", "tool_call_id": "x<|im_end|>"}]
    assert control_text_in_tool_parts(tool, specials) == ("messages[0].tool_call_id", "<|im_end|>")

"""Tool fields of a chat request (runtime/tools/spec.py and the tool parts of parse_messages): what is
accepted, and every refusal a 400 naming its field, before any work is done."""

from __future__ import annotations

import pytest

from runtime.errors import APIError
from runtime.validation import parse_generation, parse_messages
from runtime.tools.spec import MAX_TOOLS, parse_tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def rejects(body: dict, param: str, code: str | None = None) -> APIError:
    with pytest.raises(APIError) as e:
        parse_tools(body)
    assert e.value.status == 400 and e.value.param == param, (e.value.param, e.value.message)
    if code:
        assert e.value.code == code
    return e.value


def test_no_tools_is_none():
    assert parse_tools({}) is None
    assert parse_tools({"tool_choice": "none"}) is None


def test_defaults_auto_and_parallel():
    spec = parse_tools({"tools": [WEATHER, TIME]})
    assert spec is not None and spec.choice.mode == "auto" and spec.parallel and spec.active
    assert [t.name for t in spec.callable_tools] == ["get_weather", "get_time"]
    assert spec.finish_reason == "tool_calls"
    assert spec.tools[0].strict and spec.tools[0].enforceable
    assert spec.tools[1].parameters == {"type": "object", "properties": {}}


def test_every_choice_form():
    assert parse_tools({"tools": [WEATHER], "tool_choice": "none"}).active is False
    assert parse_tools({"tools": [WEATHER], "tool_choice": "required"}).choice.mode == "required"
    named = parse_tools(
        {"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}
    )
    assert named.choice.mode == "function" and [t.name for t in named.callable_tools] == ["get_time"]
    assert named.finish_reason == "stop"  # as OpenAI answers a named choice
    assert parse_tools({"tools": [WEATHER], "parallel_tool_calls": False}).parallel is False


def test_a_choice_naming_an_unknown_tool_names_the_field():
    e = rejects({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice")
    assert "nope" in e.message and "get_weather" in e.message


@pytest.mark.parametrize(
    "body, param",
    [
        ({"tools": {"a": 1}}, "tools"),
        ({"tools": [5]}, "tools[0]"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools[0].function.parameters"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]}, "tools[0].function.strict"),
        ({"tools": [TIME, TIME]}, "tools"),
        ({"tools": [TIME], "tool_choice": "always"}, "tool_choice"),
        ({"tools": [TIME], "tool_choice": 3}, "tool_choice"),
        ({"tools": [TIME], "tool_choice": {"type": "function"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TIME], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"functions": [{"name": "f"}]}, "functions"),
    ],
)
def test_bad_tool_fields_name_the_field(body, param):
    rejects(body, param)


def test_a_strict_tool_with_an_unenforceable_schema_is_refused_naming_the_keyword():
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "strict": True,
            "parameters": {"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}},
        },
    }
    e = rejects({"tools": [tool]}, "tools[0].function.parameters", "unsupported_schema")
    assert "pattern" in e.message


def test_a_loose_tool_with_an_unenforceable_schema_is_accepted_as_any_object():
    tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"pattern": "^x"}}}},
    }
    spec = parse_tools({"tools": [tool]})
    assert spec.tools[0].enforceable is False


def test_sizes_are_bounded_before_schemas_are_walked():
    many = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(MAX_TOOLS + 1)]
    rejects({"tools": many}, "tools", "array_above_max_length")
    big = {"type": "function", "function": {"name": "f", "description": "d" * 10_001}}
    rejects({"tools": [big]}, "tools[0].function.description", "string_above_max_length")
    huge = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "description": "d" * 100_001}},
    }
    rejects({"tools": [huge]}, "tools[0].function.parameters", "string_above_max_length")


def test_generation_params_carry_the_spec_and_refuse_response_format_beside_active_tools():
    gp = parse_generation({"model": "m", "tools": [TIME]}, None, None)
    assert gp.tools is not None and gp.tools.tools[0].name == "get_time"
    with pytest.raises(APIError) as e:
        parse_generation({"model": "m", "tools": [TIME], "response_format": {"type": "json_object"}}, None, None)
    assert e.value.param == "response_format"
    # With the tools switched off, response_format applies.
    gp = parse_generation(
        {"model": "m", "tools": [TIME], "tool_choice": "none", "response_format": {"type": "json_object"}}, None, None
    )
    assert gp.sampling.grammar is not None


# -- the conversation's tool parts ----------------------------------------------------------------


def test_history_with_calls_and_results():
    msgs = parse_messages(
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
            ]
        }
    )
    assert msgs[1]["content"] == "" and msgs[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert msgs[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}


@pytest.mark.parametrize(
    "msg, param",
    [
        ({"role": "tool", "content": "x"}, "messages[0].tool_call_id"),
        ({"role": "assistant", "tool_calls": {"id": "a"}}, "messages[0].tool_calls"),
        ({"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}, "messages[0].tool_calls[0].id"),
        ({"role": "assistant", "tool_calls": [{"id": "a"}]}, "messages[0].tool_calls[0].function"),
        (
            {"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": {"x": 1}}}]},
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_bad_history_parts_name_the_field(msg, param):
    with pytest.raises(APIError) as e:
        parse_messages({"messages": [msg]})
    assert e.value.status == 400 and e.value.param == param


# -- the Responses API's shape (flat function tools), read by the same checks -----------------------


def test_responses_shape_flat_tools_strict_by_default():
    flat = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
    spec = parse_tools({"tools": [flat], "tool_choice": {"type": "function", "name": "get_weather"}}, responses=True)
    assert spec.tools[0].name == "get_weather" and spec.tools[0].strict and spec.choice.name == "get_weather"
    assert parse_tools({"tools": [{**flat, "strict": False}]}, responses=True).tools[0].strict is False


@pytest.mark.parametrize(
    "tool, param, code",
    [
        ({"type": "custom", "name": "apply_patch"}, "tools[0].type", "unsupported_tool_type"),
        ({"type": "function", "name": "bad name"}, "tools[0].name", "invalid_value"),
        ({"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"a": {"pattern": "x"}}}},
         "tools[0].parameters", "unsupported_schema"),  # strict by default: enforceable or refused
    ],
)
def test_responses_shape_errors_name_its_own_fields(tool, param, code):
    with pytest.raises(APIError) as e:
        parse_tools({"tools": [tool]}, responses=True)
    assert e.value.param == param and e.value.code == code

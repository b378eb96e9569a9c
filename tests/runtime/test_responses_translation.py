"""The Responses API as pure translation: request → chat completions body (runtime/responses.py), and
generation events → the Response object and its ordered stream events (runtime/api/responses_format.py).
End to end with the openai SDK: tests/e2e/test_responses_api.py."""

from __future__ import annotations

import pytest

from runtime.api.responses_format import ResponseBuilder, responses_usage
from runtime.engine.events import Failed, Finished, Started, Text, ToolCallDelta
from runtime.errors import APIError
from runtime.responses import responses_param, translate_request

M = "SmolLM2-135M-Instruct"


def rejects(body: dict, param: str, code: str = "invalid_value") -> APIError:
    with pytest.raises(APIError) as ei:
        translate_request({"model": M, **body})
    e = ei.value
    assert (e.status, e.param, e.code) == (400, param, code), e
    assert e.message
    return e


def test_string_input_with_instructions_and_sampling():
    rr = translate_request(
        {"model": M, "input": "Hi", "instructions": "Be brief.", "temperature": 0.2, "top_p": 0.9,
         "max_output_tokens": 33, "stream": True}
    )
    assert rr.stream is True
    assert rr.chat_body == {
        "model": M,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stream": True, "temperature": 0.2, "top_p": 0.9, "max_tokens": 33,
    }
    assert rr.echo["store"] is False and rr.echo["instructions"] == "Be brief."
    assert rr.echo["max_output_tokens"] == 33 and rr.echo["text"] == {"format": {"type": "text"}}
    assert rr.echo["tool_choice"] == "auto" and rr.echo["tools"] == []


def test_message_items_parts_and_roles():
    rr = translate_request({"model": M, "input": [
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                          {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "c",
                                                               "annotations": []}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"role": "user", "content": "d"},
    ]})
    assert rr.chat_body["messages"] == [
        {"role": "system", "content": "Rules."}, {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"},
    ]


def test_function_calls_and_outputs_become_tool_messages():
    rr = translate_request({"model": M, "input": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]},
    ]})
    assert rr.chat_body["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    ]


def test_tools_tool_choice_and_text_format():
    params = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    rr = translate_request({
        "model": M, "input": "x",
        "tools": [{"type": "function", "name": "weather", "description": "d", "parameters": params, "strict": True}],
        "tool_choice": {"type": "function", "name": "weather"}, "parallel_tool_calls": False,
        "text": {"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}},
    })
    b = rr.chat_body
    assert b["tools"] == [{"type": "function", "function": {"name": "weather", "description": "d",
                                                            "parameters": params, "strict": True}}]
    # Responses tools are strict unless said otherwise; the chat form says so explicitly.
    loose = {"model": M, "input": "x", "tools": [{"type": "function", "name": "f", "parameters": params}]}
    assert translate_request(loose).chat_body["tools"][0]["function"]["strict"] is True
    assert translate_request(loose).chat_body["tool_choice"] == "auto"
    assert b["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert b["parallel_tool_calls"] is False
    assert b["response_format"] == {"type": "json_schema",
                                    "json_schema": {"name": "out", "schema": schema, "strict": True}}
    assert translate_request({**loose, "tool_choice": "required"}).chat_body["tool_choice"] == "required"
    assert translate_request({"model": M, "input": "x", "text": {"format": {"type": "json_object"}}}) \
        .chat_body["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("body, param, code", [
    ({"input": "x", "store": True}, "store", "unsupported_parameter"),
    ({"input": "x", "store": "no"}, "store", "invalid_type"),
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter"),
    ({"input": "x", "conversation": "conv_1"}, "conversation", "unsupported_parameter"),
    ({"input": "x", "background": True}, "background", "unsupported_parameter"),
    # Tools: the tool-calling parser's Responses mode (runtime/tools/spec.py), its errors naming flat fields.
    ({"input": "x", "tools": [{"type": "custom", "name": "patch"}]}, "tools[0].type", "unsupported_tool_type"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type", "unsupported_tool_type"),
    ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name", "invalid_value"),
    ({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "string", "pattern": "x+"}}}}]}, "tools[0].parameters", "unsupported_schema"),
    ({"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "custom", "name": "p"}},
     "tool_choice", "invalid_type"),
    ({"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}},
     "tool_choice", "invalid_value"),
    ({"input": "x", "tool_choice": "required"}, "tool_choice", "invalid_value"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
    ({"input": "x", "stream": "yes"}, "stream", "invalid_type"),
    ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type", "invalid_value"),
    ({"input": "x", "instructions": 5}, "instructions", "invalid_type"),
    ({}, "input", "missing_required_parameter"),
    ({"input": 5}, "input", "invalid_type"),
    ({"input": []}, "input", "empty_array"),
    ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role", "invalid_value"),
    ({"input": [{"role": "user"}]}, "input[0].content", "missing_required_parameter"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]}, "input[0].content[0]",
     "unsupported_content"),
    ({"input": [{"role": "user", "content": [{"type": "output_text", "text": "u"}]}]}, "input[0].content[0].type",
     "invalid_value"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments", "invalid_type"),
    ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output", "missing_required_parameter"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]", "unsupported_parameter"),
    ({"input": [{"type": "computer_call_output"}]}, "input[0].type", "unsupported_parameter"),
])
def test_bad_requests_name_the_responses_field(body, param, code):
    rejects(body, param, code)


def test_store_false_is_accepted_and_echoed():
    assert translate_request({"model": M, "input": "x", "store": False}).echo["store"] is False


@pytest.mark.parametrize("chat, responses", [
    ("messages", "input"), ("messages[3].content", "input"), ("max_tokens", "max_output_tokens"),
    ("response_format", "text.format"), ("temperature", "temperature"), ("tools", "tools"), (None, None),
    ("tools[1].function.parameters", "tools[1].parameters"), ("tool_choice.function.name", "tool_choice.name"),
    ("tools[0].function", "tools[0]"),
])
def test_chat_params_are_renamed_in_errors(chat, responses):
    assert responses_param(chat) == responses


USAGE = responses_usage(20, 3, 4)


def kinds(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def test_text_answer_event_order_and_object():
    b = ResponseBuilder(M, translate_request({"model": M, "input": "x"}).echo, 1700000000, "resp_1")
    events = b.start() + b.text("Hel") + b.text("") + b.text("lo") + b.finish("stop", USAGE)
    assert kinds(events) == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    added = events[2]["item"]
    assert added["type"] == "message" and added["status"] == "in_progress" and added["content"] == []
    assert {e.get("item_id") for e in events[3:8]} == {added["id"]}
    assert events[6]["text"] == "Hello" and events[7]["part"]["text"] == "Hello"
    assert events[8]["item"]["status"] == "completed"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["usage"] == USAGE and final["id"] == "resp_1"
    assert final["output"] == [{"type": "message", "id": added["id"], "status": "completed", "role": "assistant",
                                "content": [{"type": "output_text", "text": "Hello", "annotations": [],
                                             "logprobs": []}]}]
    assert final["store"] is False and final["object"] == "response" and final["created_at"] == 1700000000
    assert USAGE == {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 3,
                     "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 23}


def test_length_makes_the_response_incomplete():
    b = ResponseBuilder(M, {}, 0)
    events = b.start() + b.text("Once") + b.finish("length", USAGE)
    assert kinds(events)[-1] == "response.incomplete"
    final = events[-1]["response"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete" and events[-2]["item"]["status"] == "incomplete"
    # A call finished before the cut stays completed; the message cut by the limit is incomplete.
    b = ResponseBuilder(M, {}, 0)
    events = b.start() + b.tool_call(0, "call_1", "f", "{}") + b.text("and") + b.finish("length", USAGE)
    assert [o["status"] for o in events[-1]["response"]["output"]] == ["completed", "incomplete"]


def test_failure_after_start():
    b = ResponseBuilder(M, {}, 0)
    events = b.start() + b.text("x") + b.fail("the engine stopped")
    assert kinds(events)[-1] == "response.failed"
    assert events[-1]["response"]["status"] == "failed"
    # The message it had stays in the object, cut short.
    [msg] = events[-1]["response"]["output"]
    assert msg["status"] == "incomplete" and msg["content"][0]["text"] == "x"
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "the engine stopped"}


def test_function_calls_after_text():
    b = ResponseBuilder(M, {}, 0)
    events = (b.start() + b.text("Let me check.") + b.tool_call(0, "call_a", "weather", "")
              + b.tool_call(0, None, None, '{"city":') + b.tool_call(0, None, None, '"Paris"}')
              + b.tool_call(1, "call_b", "time", "{}") + b.finish("tool_calls", USAGE))
    assert kinds(events) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] == [0, 1, 2]
    added = events[8]["item"]
    assert added["type"] == "function_call" and added["call_id"] == "call_a" and added["arguments"] == ""
    assert events[11]["arguments"] == '{"city":"Paris"}' and events[11]["name"] == "weather"
    out = events[-1]["response"]["output"]
    assert [o["type"] for o in out] == ["message", "function_call", "function_call"]
    assert out[1] == {"type": "function_call", "id": added["id"], "call_id": "call_a", "name": "weather",
                      "arguments": '{"city":"Paris"}', "status": "completed"}
    assert out[2]["call_id"] == "call_b" and out[2]["arguments"] == "{}"


def test_feed_reads_the_generation_vocabulary():
    """What the route does: every event of the answer goes through feed()."""
    b = ResponseBuilder(M, {}, 0)
    events = b.start()
    for ev in [Started(12, M), Text("Hi"), ToolCallDelta(0, "call_x", "f", '{"a":1}'),
               Finished("tool_calls", 12, 5, 2)]:
        events += b.feed(ev)
    assert kinds(events)[-1] == "response.completed"
    final = events[-1]["response"]
    assert final["usage"] == responses_usage(12, 5, 2)
    assert [o["type"] for o in final["output"]] == ["message", "function_call"]
    b = ResponseBuilder(M, {}, 0)
    events = b.start() + b.feed(Text("x")) + b.feed(Failed("the model's engine stopped", "engine_stopped"))
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "the model's engine stopped"}
    b = ResponseBuilder(M, {}, 0)
    events = b.start() + b.feed(Failed("no token fits the grammar", "invalid_grammar"))
    assert events[-1]["response"]["error"]["code"] == "invalid_prompt"


def test_logprobs_are_asked_with_include_or_top_logprobs():
    inc = {"model": M, "input": "x", "include": ["message.output_text.logprobs", "reasoning.encrypted_content"]}
    assert translate_request(inc).chat_body["logprobs"] is True
    assert "top_logprobs" not in translate_request(inc).chat_body
    rr = translate_request({**inc, "top_logprobs": 4})
    assert (rr.chat_body["logprobs"], rr.chat_body["top_logprobs"], rr.echo["top_logprobs"]) == (True, 4, 4)
    assert "logprobs" not in translate_request({"model": M, "input": "x", "include": []}).chat_body
    rejects({"input": "x", "include": "message.output_text.logprobs"}, "include", "invalid_type")


def test_logprobs_ride_on_the_text_events():
    lp = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
    tail = [{"token": "!", "logprob": -2.0, "bytes": [33], "top_logprobs": []}]
    b = ResponseBuilder(M, {}, 0)
    events = b.start() + b.feed(Text("Hi", logprobs=lp)) + b.feed(Text("", logprobs=tail))
    events += b.feed(Finished("stop", 3, 2))
    delta = next(e for e in events if e["type"] == "response.output_text.delta")
    assert delta["logprobs"] == lp
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert done["logprobs"] == lp + tail
    assert events[-1]["response"]["output"][0]["content"][0]["logprobs"] == lp + tail

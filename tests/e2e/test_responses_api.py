"""POST /v1/responses (issue 13), end to end: openai-python's ``responses.create`` and
``responses.stream()`` against a real node serving the real default model. The API is stateless here:
``store`` is echoed false, and what needs stored responses is a 400 naming the field."""

from __future__ import annotations

import json
import os
import signal

import httpx
import openai
import pytest

from ..conftest import FILENAME, seed_home, start_node
from ..schema_check import violations

pytestmark = pytest.mark.e2e

ORDER_TEXT = [
    "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    "response.output_text.delta", "response.output_text.done", "response.content_part.done",
    "response.output_item.done",
]


def check_order(types: list[str], last: str) -> None:
    """The text answer's events in OpenAI's order: deltas repeat, everything else appears once."""
    collapsed = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]
    assert collapsed == ORDER_TEXT + [last], types


def test_create_with_instructions_and_usage(openai_client, model_id):
    r = openai_client.responses.create(
        model=model_id, instructions="Answer in one short sentence.", input="What is the capital of France?",
        max_output_tokens=60, temperature=0,
    )
    assert r.id.startswith("resp_") and r.object == "response" and r.model == model_id
    assert r.status == "completed" and r.error is None and r.incomplete_details is None
    assert r.store is False and r.instructions == "Answer in one short sentence." and r.max_output_tokens == 60
    assert len(r.output) == 1 and r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.output[0].status == "completed" and r.output[0].id.startswith("msg_")
    assert r.output_text.strip() and r.output[0].content[0].type == "output_text"
    u = r.usage
    assert u.input_tokens > 10 and 0 < u.output_tokens <= 60 and u.total_tokens == u.input_tokens + u.output_tokens
    # The same generation path as chat completions: the same greedy text.
    chat = openai_client.chat.completions.create(
        model=model_id, max_tokens=60, temperature=0,
        messages=[{"role": "system", "content": "Answer in one short sentence."},
                  {"role": "user", "content": "What is the capital of France?"}],
    )
    assert chat.choices[0].message.content == r.output_text


def test_input_items_history(openai_client, model_id):
    """Message items (easy and typed, text parts, a developer message) reach the model as the same
    conversation a chat completion gets: the same greedy answer."""
    r = openai_client.responses.create(
        model=model_id, max_output_tokens=40, temperature=0,
        input=[
            {"role": "developer", "content": "You are terse."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello Ada."}]},
            {"role": "user", "content": "What is my name?"},
        ],
    )
    chat = openai_client.chat.completions.create(
        model=model_id, max_tokens=40, temperature=0,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "My name is Ada."},
                  {"role": "assistant", "content": "Hello Ada."}, {"role": "user", "content": "What is my name?"}],
    )
    assert r.output_text.strip() and r.output_text == chat.choices[0].message.content
    assert r.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")


def test_max_output_tokens_makes_it_incomplete(openai_client, model_id):
    r = openai_client.responses.create(model=model_id, input="Write a long story.", max_output_tokens=5,
                                       temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5 and r.output[0].status == "incomplete"


def test_stream_helper_and_event_order(openai_client, model_id):
    with openai_client.responses.stream(model=model_id, input="Say hello.", max_output_tokens=200,
                                        temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    check_order(types, "response.completed")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas and final.output_text == deltas
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == deltas
    assert final.status == "completed" and final.usage.output_tokens > 0
    ids = {e.response.id for e in events if hasattr(e, "response")}
    assert ids == {final.id}


def test_stream_incomplete(openai_client, model_id):
    events = list(openai_client.responses.create(model=model_id, input="Write a long story.", max_output_tokens=4,
                                                 temperature=0, stream=True))
    check_order([e.type for e in events], "response.incomplete")
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].response.usage.output_tokens == 4


def test_stream_wire_format(node, model_id):
    """Server-sent events with an ``event:`` line naming each event's type, and no ``[DONE]``."""
    with httpx.stream("POST", node.v1 + "/responses", timeout=300,
                      json={"model": model_id, "input": "Hi", "max_output_tokens": 3, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    blocks = [b for b in raw.split("\n\n") if b.strip() and not b.startswith(":")]
    for b in blocks:
        event_line, data_line = b.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        assert json.loads(data_line[6:])["type"] == event_line[7:]
    assert "[DONE]" not in raw


def test_text_format_json_schema(openai_client, model_id):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                               "country": {"type": "string", "maxLength": 30}},
              "required": ["city", "country"], "additionalProperties": False}
    r = openai_client.responses.create(
        model=model_id, input="Name a city and its country as JSON.", max_output_tokens=80, temperature=1,
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
    )
    assert r.status == "completed"
    assert violations(json.loads(r.output_text), schema) == []
    assert r.text.format.type == "json_schema"


@pytest.mark.parametrize("kw, param", [
    ({"store": True}, "store"),
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"tools": [{"type": "custom", "name": "apply_patch", "description": "x"}]}, "tools[0].type"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "string", "pattern": "a+"}}}},
     "text.format"),
    ({"max_output_tokens": 100000}, "max_output_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
     "input[0].content[0]"),
])
def test_bad_requests_are_400_naming_the_field(openai_client, model_id, kw, param):
    body = {"model": model_id, "input": "Hi", **kw}
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.responses.create(**body)
    assert e.value.body["param"] == param, e.value.body
    assert e.value.body["message"]


def test_unknown_model_is_404(openai_client):
    with pytest.raises(openai.NotFoundError) as e:
        openai_client.responses.create(model="gpt-9", input="Hi")
    assert e.value.code == "model_not_found"


@pytest.fixture
def own_node(tmp_path, model_path):
    """A node of its own: the test below crashes its engine."""
    seed_home(tmp_path, model_path)
    n = start_node(tmp_path, "--model", str(tmp_path / "data" / "models" / FILENAME), "--slots", "2",
                   "--ctx-per-slot", "2048", "--keepalive", "0.5")
    yield n
    assert n.stop() == 0, n.log()[-3000:]


def test_engine_crash_mid_stream_ends_with_response_failed(own_node, model_id):
    """The engine's process dies while the answer streams: the stream ends with response.failed and its
    error, never silently (openai-python's stream helper sees it as the last event)."""
    n = own_node
    client = openai.OpenAI(base_url=n.v1, api_key="x", timeout=300, max_retries=0)
    status = httpx.get(n.base_url + "/api/status", timeout=10).json()
    pid = next(m for m in status["models"] if m["id"] == model_id)["engine"]["pid"]
    events = []
    with client.responses.stream(model=model_id, input="Count from 1 to 1000, one number per line.",
                                 max_output_tokens=1500, temperature=0) as stream:
        for ev in stream:
            events.append(ev)
            if ev.type == "response.output_text.delta" and len(events) == 8:
                os.kill(pid, signal.SIGSEGV)
    types = [e.type for e in events]
    assert types[:4] == ORDER_TEXT[:4] and types[-1] == "response.failed", types
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.code == "server_error"
    assert "segmentation fault" in failed.error.message
    assert [e.sequence_number for e in events] == list(range(len(events)))


# -- function tools (the tool-calling path of chat completions, runtime/tools/) ------------------------

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                            "unit": {"type": "string", "enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
CLOCK = {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 40}},
         "required": ["timezone"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER,
     "strict": True},
    {"type": "function", "name": "get_time", "description": "Current time in a timezone", "parameters": CLOCK,
     "strict": True},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}
ASK_TOOLS = "What is the weather in Paris, in celsius? And the time in Tokyo?"


def calls_of(response) -> list:
    calls = [o for o in response.output if o.type == "function_call"]
    for c in calls:
        assert c.name in SCHEMAS and c.call_id and c.id.startswith("fc_") and c.status == "completed"
        assert violations(json.loads(c.arguments), SCHEMAS[c.name]) == [], (c.name, c.arguments)
    return calls


def test_required_tool_choice_gives_schema_valid_function_calls(openai_client, model_id):
    r = openai_client.responses.create(model=model_id, input=ASK_TOOLS, tools=TOOLS, tool_choice="required",
                                       max_output_tokens=200, temperature=0)
    assert r.status == "completed"
    assert calls_of(r)
    assert r.tool_choice == "required" and [t.name for t in r.tools] == ["get_weather", "get_time"]


def test_named_tool_choice_calls_that_tool(openai_client, model_id):
    r = openai_client.responses.create(model=model_id, input=ASK_TOOLS, tools=TOOLS, max_output_tokens=200,
                                       temperature=0, tool_choice={"type": "function", "name": "get_time"})
    calls = calls_of(r)
    assert calls and {c.name for c in calls} == {"get_time"}


def test_stream_of_function_calls(openai_client, model_id):
    with openai_client.responses.stream(model=model_id, input=ASK_TOOLS, tools=TOOLS, tool_choice="required",
                                        max_output_tokens=200, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    calls = calls_of(final)
    assert calls
    # Per call: added, argument deltas, arguments done, item done — the deltas adding up to the arguments.
    for idx, call in enumerate(final.output):
        if call.type != "function_call":
            continue
        mine = [e for e in events if getattr(e, "output_index", None) == idx]
        kinds = [e.type for e in mine]
        assert kinds[0] == "response.output_item.added" and kinds[-2:] == [
            "response.function_call_arguments.done", "response.output_item.done"]
        assert set(kinds[1:-2]) <= {"response.function_call_arguments.delta"}
        assert "".join(e.delta for e in mine[1:-2]) == mine[-2].arguments == call.arguments
        assert mine[0].item.call_id == call.call_id and mine[0].item.name == call.name


def test_a_function_call_round_trip(openai_client, model_id):
    """The calls and their outputs go back as input items; the next answer is a message (tool_choice
    none), as an agent loop does it."""
    first = openai_client.responses.create(model=model_id, input=ASK_TOOLS, tools=TOOLS, tool_choice="required",
                                           max_output_tokens=200, temperature=0)
    calls = calls_of(first)
    history = [{"role": "user", "content": ASK_TOOLS}]
    for c in calls:
        history.append({"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments})
        history.append({"type": "function_call_output", "call_id": c.call_id, "output": "sunny, 21 C"})
    second = openai_client.responses.create(model=model_id, input=history, tools=TOOLS, tool_choice="none",
                                            max_output_tokens=60, temperature=0)
    assert second.output and second.output[0].type == "message" and second.output_text.strip()
    assert not [o for o in second.output if o.type == "function_call"]


def test_a_tool_choice_naming_an_unknown_tool_is_a_400(openai_client, model_id):
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.responses.create(model=model_id, input="x", tools=TOOLS,
                                       tool_choice={"type": "function", "name": "nope"})
    assert e.value.body["param"] == "tool_choice" and "nope" in e.value.body["message"], e.value.body


# -- LangChain over the Responses API ------------------------------------------------------------------


def test_langchain_use_responses_api(node, model_id):
    """LangChain's ChatOpenAI with use_responses_api=True: plain and streamed answers, structured output
    (text.format json_schema), and bind_tools(tool_choice="any") giving a schema-valid call."""
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    llm = ChatOpenAI(base_url=node.v1, api_key="x", model=model_id, temperature=0, max_tokens=60, timeout=300,
                     max_retries=0, use_responses_api=True)
    msgs = [SystemMessage("You are terse."), HumanMessage("What is the capital of France?")]
    reply = llm.invoke(msgs)
    assert reply.text.strip()
    assert reply.usage_metadata["output_tokens"] > 0 and reply.usage_metadata["input_tokens"] > 0
    streamed = "".join(chunk.text for chunk in llm.stream(msgs))
    assert streamed == reply.text

    class City(BaseModel):
        name: str = Field(max_length=40)
        country: str = Field(max_length=40)

    roomy = ChatOpenAI(base_url=node.v1, api_key="x", model=model_id, temperature=0, max_tokens=120, timeout=300,
                       max_retries=0, use_responses_api=True)
    out = roomy.with_structured_output(City, method="json_schema", strict=True).invoke("Describe Paris.")
    assert isinstance(out, City)

    def get_weather(city: str, unit: str) -> str:
        """Current weather in a city; unit is 'c' or 'f'."""
        return "sunny"

    called = llm.bind_tools([get_weather], tool_choice="any").invoke("What is the weather in Paris?")
    assert called.tool_calls and called.tool_calls[0]["name"] == "get_weather"
    assert set(called.tool_calls[0]["args"]) == {"city", "unit"}


def test_logprobs_with_include(openai_client, model_id):
    """include ["message.output_text.logprobs"] with top_logprobs: per token, in the deltas, the done
    event and the output_text part; greedy, so each sampled token is the most likely one."""
    kw = dict(model=model_id, input="What is the capital of France?", max_output_tokens=20, temperature=0,
              include=["message.output_text.logprobs"], top_logprobs=3)
    r = openai_client.responses.create(**kw)
    part = r.output[0].content[0]
    assert "".join(e.token for e in part.logprobs) == part.text == r.output_text
    for e in part.logprobs:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
    assert r.top_logprobs == 3
    events = list(openai_client.responses.create(stream=True, **kw))
    streamed = [e for ev in events if ev.type == "response.output_text.delta" for e in ev.logprobs]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4))
                                                                  for e in part.logprobs]
    plain = openai_client.responses.create(model=model_id, input="Hi", max_output_tokens=4, temperature=0)
    assert plain.output[0].content[0].logprobs == []

"""Tool calling on /v1/chat/completions with the official openai SDK (and raw HTTP for the exact wire),
against a real node serving the real default model (SmolLM2-135M: no native tool format, so the generic
JSON protocol, held by a grammar). The tests assert the protocol — calls of offered tools whose arguments
match their schemas, the right finish reasons, the stream as OpenAI's clients assemble it — not the small
model's judgement about when to call a tool."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.schema_check import violations

pytestmark = pytest.mark.e2e

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMS = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 40}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": WEATHER_PARAMS,
            "strict": True,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current time in a timezone",
            "parameters": TIME_PARAMS,
            "strict": True,
        },
    },
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius? And the time in Tokyo?"}]
NAMED = {"type": "function", "function": {"name": "get_time"}}


def assert_valid_calls(calls) -> None:
    """Every call: an OpenAI-shaped id, an offered tool, arguments that parse and match its schema."""
    assert calls
    ids = [c.id for c in calls]
    assert len(set(ids)) == len(ids)
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_") and len(c.id) == 29
        assert c.function.name in SCHEMAS
        args = json.loads(c.function.arguments)
        assert violations(args, SCHEMAS[c.function.name]) == [], (c.function.name, args)


def create(client, model_id, **kw):
    return client.chat.completions.create(model=model_id, messages=kw.pop("messages", ASK), tools=TOOLS,
                                          max_tokens=kw.pop("max_tokens", 200), temperature=0, **kw)


def test_required_gives_schema_valid_calls(openai_client, model_id):
    r = create(openai_client, model_id, tool_choice="required")
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    assert_valid_calls(c.message.tool_calls)
    assert r.usage.completion_tokens > 0


def test_named_choice_calls_that_tool_and_finishes_with_stop(openai_client, model_id):
    r = create(openai_client, model_id, tool_choice=NAMED)
    c = r.choices[0]
    assert c.finish_reason == "stop" and c.message.content is None  # as OpenAI answers a named choice
    assert len(c.message.tool_calls) == 1 and c.message.tool_calls[0].function.name == "get_time"
    assert_valid_calls(c.message.tool_calls)


def test_auto_answers_with_calls_or_words(openai_client, model_id):
    for temperature, seed in [(0, None), (1, 1), (1, 2)]:
        r = openai_client.chat.completions.create(model=model_id, messages=ASK, tools=TOOLS, max_tokens=200,
                                                  temperature=temperature, seed=seed)
        c = r.choices[0]
        if c.message.tool_calls:
            assert c.finish_reason == "tool_calls"
            assert_valid_calls(c.message.tool_calls)
        else:
            assert isinstance(c.message.content, str) and c.finish_reason in ("stop", "length")


def test_none_answers_with_words(openai_client, model_id):
    r = create(openai_client, model_id, tool_choice="none", max_tokens=30)
    c = r.choices[0]
    assert not c.message.tool_calls and c.message.content and c.finish_reason in ("stop", "length")


def test_parallel_calls_and_their_opt_out(openai_client, model_id):
    # Parallel calls are allowed (OpenAI's default): whatever number the model writes, each is valid.
    r = create(openai_client, model_id, tool_choice="required", parallel_tool_calls=True)
    assert_valid_calls(r.choices[0].message.tool_calls)
    for seed in range(3):
        r = openai_client.chat.completions.create(model=model_id, messages=ASK, tools=TOOLS, max_tokens=200,
                                                  temperature=1, seed=seed, tool_choice="required",
                                                  parallel_tool_calls=False)
        calls = r.choices[0].message.tool_calls
        assert len(calls) == 1  # the grammar allows one call only
        assert_valid_calls(calls)


def test_a_tool_round_trip(openai_client, model_id):
    """The call, its result fed back as a tool message, and the next answer."""
    first = create(openai_client, model_id, tool_choice=NAMED)
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [
        first.choices[0].message,  # the SDK's own message object, as OpenAI's guide (and our README) pass it
        {"role": "tool", "tool_call_id": call.id, "content": "14:05"},
    ]
    r = create(openai_client, model_id, messages=history, tool_choice="auto")
    c = r.choices[0]
    assert c.message.tool_calls or isinstance(c.message.content, str)
    if c.message.tool_calls:
        assert_valid_calls(c.message.tool_calls)


def test_stream_helper_assembles_the_same_calls(openai_client, model_id):
    """openai-python's stream helper — the strictest accumulator: it concatenates every id, name and
    argument fragment it receives and parses the arguments of strict tools."""
    with openai_client.chat.completions.stream(model=model_id, messages=ASK, tools=TOOLS, tool_choice="required",
                                               max_tokens=200, temperature=0,
                                               stream_options={"include_usage": True}) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    msg = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert_valid_calls(msg.tool_calls)
    assert [d.name for d in done] == [c.function.name for c in msg.tool_calls]
    assert [d.parsed_arguments for d in done] == [json.loads(c.function.arguments) for c in msg.tool_calls]
    assert final.usage is not None and final.usage.completion_tokens > 0


def test_stream_wire_is_exactly_openais(node, model_id):
    """Raw SSE: the first delta of each call carries index, id, type, name and empty arguments; later
    deltas only index and argument fragments; then the finish chunk, the usage chunk and [DONE]."""
    body = {"model": model_id, "messages": ASK, "tools": TOOLS, "tool_choice": "required", "max_tokens": 200,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=node.base_url, timeout=300) as http:
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    data = [line[6:] for line in r.text.split("\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    finish = chunks[-2]["choices"][0]
    assert finish["finish_reason"] == "tool_calls" and finish["delta"] == {}
    seen: dict[int, dict] = {}
    for ch in chunks[1:-2]:
        (choice,) = ch["choices"]
        assert choice["finish_reason"] is None
        for tc in choice["delta"].get("tool_calls", []):
            i = tc["index"]
            if i not in seen:
                assert set(tc) == {"index", "id", "type", "function"} and tc["type"] == "function"
                assert tc["function"]["arguments"] == "" and tc["function"]["name"] in SCHEMAS
                seen[i] = {"id": tc["id"], "name": tc["function"]["name"], "arguments": ""}
            else:
                assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}
                seen[i]["arguments"] += tc["function"]["arguments"]
    assert seen and sorted(seen) == list(range(len(seen)))
    for call in seen.values():
        assert violations(json.loads(call["arguments"]), SCHEMAS[call["name"]]) == []


def test_a_choice_naming_an_unknown_tool_is_a_400_naming_the_field(openai_client, model_id):
    with pytest.raises(openai.BadRequestError) as e:
        create(openai_client, model_id, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert e.value.param == "tool_choice" and "nope" in e.value.message


def test_tools_on_completions_is_a_400(openai_client, model_id):
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.completions.create(model=model_id, prompt="hi", extra_body={"tools": TOOLS})
    assert e.value.param == "tools"


def test_models_show_the_tool_format(openai_client, model_id):
    m = openai_client.models.retrieve(model_id)
    assert m.model_extra["closedmesh"]["tool_format"] == "generic"  # SmolLM2's template has no tool format


# SmolLM2's tokens that can begin the key "tool_call(s)" ('t', 'to', 'tool', 'too'): banned, the grammar's
# only other way on is {"response": ...} — the small model itself calls a tool for nearly everything.
NO_CALL_START = {"100": -100, "1141": -100, "19324": -100, "23034": -100}


@pytest.mark.parametrize("bias", [None, NO_CALL_START], ids=["calls", "response"])
def test_auto_streams_words_as_written_and_calls_whole(openai_client, model_id, bias):
    """auto with the generic protocol: a {"response": ...} answer streams as decoded text (several
    deltas, adding up to the message), calls come whole and valid. (Across two requests a greedy answer
    may differ where the model is nearly undecided — a cached prompt is computed in other batch shapes —
    so each answer is checked on its own.)"""
    messages = [{"role": "user", "content": "Say hello to me in one sentence."}]
    extra = {"logit_bias": bias} if bias else {}
    plain = create(openai_client, model_id, messages=messages, tool_choice="auto", max_tokens=120, **extra)
    if bias:
        assert plain.choices[0].message.content and not plain.choices[0].message.tool_calls
        assert not plain.choices[0].message.content.lstrip().startswith("{")  # the decoded text, not JSON
    with openai_client.chat.completions.stream(model=model_id, messages=messages, tools=TOOLS, tool_choice="auto",
                                               max_tokens=120, temperature=0, **extra) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    f = final.choices[0]
    deltas = [e.delta for e in events if e.type == "content.delta" and e.delta]
    if f.message.tool_calls:
        assert f.finish_reason == "tool_calls" and not deltas
        assert_valid_calls(f.message.tool_calls)
    else:
        assert f.message.content and "".join(deltas) == f.message.content
        assert len(deltas) > 1  # streamed as it was written, not all at the end

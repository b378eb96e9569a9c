"""Every documented sampling parameter, end to end: the official openai SDK against a real node with
the real model. Each parameter is accepted and, where an effect can be shown deterministically, has
it (greedy answers, fixed seeds, reductions to greedy).

Issue 10, break 3: presence_penalty, frequency_penalty and repeat_penalty used to call llama.cpp with
the wrong number of arguments; the request hung and the model's engine answered 503 until restart.
Issue 13: structured output under temperature 1 must always parse and match the schema.
"""

from __future__ import annotations

import json

import pytest

from runtime.engine.llama_model import LlamaModel

from ..schema_check import violations

pytestmark = pytest.mark.e2e

Q = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
REPEAT = "The list: apple, apple, apple, apple, apple, apple,"


@pytest.fixture(scope="module")
def tokens(model_path):
    """The model's own tokenizer (the same GGUF the node serves): text -> token ids."""
    m = LlamaModel(model_path)
    yield lambda text: m.tokenize(text, add_special=False, parse_special=False)
    m.close()


def chat(client, model, messages=Q, **kw):
    return client.chat.completions.create(model=model, messages=messages, **kw)


def warm(client, model, messages=Q) -> None:
    """One call before compared ones, so that each of them finds the prompt in the KV cache and runs the same
    computation: llama.cpp's logits differ slightly between a cold and a cached prompt (it is not
    batch-invariant), and a near-tie can then change a token."""
    chat(client, model, messages, max_tokens=1, temperature=0)


def text_of(r) -> str:
    return r.choices[0].message.content


def test_temperature(openai_client, model_id):
    warm(openai_client, model_id)
    greedy = [text_of(chat(openai_client, model_id, max_tokens=12, temperature=0)) for _ in range(2)]
    assert greedy[0] == greedy[1] and greedy[0].strip()
    hot = {text_of(chat(openai_client, model_id, max_tokens=12, temperature=2, seed=s)) for s in (1, 2, 3)}
    assert hot - {greedy[0]}, "temperature 2 never changed the greedy answer"


def test_seed_reproduces_a_sampled_answer(openai_client, model_id):
    kw = dict(max_tokens=12, temperature=1.2)
    warm(openai_client, model_id)
    a = [text_of(chat(openai_client, model_id, seed=1234, **kw)) for _ in range(2)]
    assert a[0] == a[1]
    others = {text_of(chat(openai_client, model_id, seed=s, **kw)) for s in (1, 2, 3)}
    assert others - {a[0]}, "different seeds gave the same answer"


@pytest.mark.parametrize("kw", [{"extra_body": {"top_k": 1}}, {"top_p": 0.0}, {"extra_body": {"min_p": 1.0}}],
                         ids=["top_k", "top_p", "min_p"])
def test_truncation_parameters_reduce_sampling_to_greedy(openai_client, model_id, kw):
    """Each keeps only the most likely token, so a hot sampled answer equals the greedy one."""
    warm(openai_client, model_id)
    greedy = text_of(chat(openai_client, model_id, max_tokens=12, temperature=0))
    for seed in (1, 2):
        assert text_of(chat(openai_client, model_id, max_tokens=12, temperature=2, seed=seed, **kw)) == greedy


def test_stop(openai_client, model_id):
    full = text_of(chat(openai_client, model_id, max_tokens=12, temperature=0))
    word = full.split()[3]
    r = chat(openai_client, model_id, max_tokens=12, temperature=0, stop=[word, "never-in-output"])
    assert r.choices[0].finish_reason == "stop"
    assert text_of(r) == full[:full.index(word)]


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
def test_max_tokens(openai_client, model_id, key):
    r = chat(openai_client, model_id, temperature=0, **{key: 3})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


@pytest.mark.parametrize("kw", [{"presence_penalty": 2.0}, {"frequency_penalty": 2.0},
                                {"extra_body": {"repeat_penalty": 2.0}}],
                         ids=["presence_penalty", "frequency_penalty", "repeat_penalty"])
def test_penalties_change_a_repetitive_greedy_answer(openai_client, model_id, kw):
    """Issue 10, break 3. Before the fix this request hung and every later one got 503."""
    def complete(**extra):
        return openai_client.completions.create(model=model_id, prompt=REPEAT, max_tokens=20, temperature=0,
                                                **extra).choices[0].text

    plain = complete()
    assert plain.count("apple") >= 8, plain  # the baseline really repeats
    penalized = complete(**kw)
    assert penalized.count("apple") < plain.count("apple") - 3, penalized
    # Sampled (non-greedy) penalized requests and chat run too, and the node answers afterwards.
    assert text_of(chat(openai_client, model_id, max_tokens=8, temperature=1, seed=3, **kw))
    assert text_of(chat(openai_client, model_id, max_tokens=8, temperature=0)).strip()


def test_logit_bias(openai_client, model_id, tokens):
    first = text_of(chat(openai_client, model_id, max_tokens=1, temperature=0))
    banned = tokens(first)
    assert len(banned) == 1, (first, banned)
    r = chat(openai_client, model_id, max_tokens=1, temperature=0, logit_bias={str(banned[0]): -100})
    assert text_of(r) != first
    # +100 forces a token the model would never start with.
    forced = tokens(" banana")
    assert len(forced) == 1
    r = chat(openai_client, model_id, max_tokens=2, temperature=0, logit_bias={str(forced[0]): 100})
    assert text_of(r).startswith(" banana") or text_of(r).startswith("banana")


def test_n(openai_client, model_id):
    r = chat(openai_client, model_id, max_tokens=16, temperature=1.5, seed=7, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1, "n=3 sampled three identical answers"
    r = chat(openai_client, model_id, max_tokens=16, temperature=0, n=2)
    assert r.choices[0].message.content == r.choices[1].message.content


CITY = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 40},
    "country": {"type": "string", "maxLength": 40},
    "population": {"type": "integer"},
    "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
    "capital": {"type": "boolean"},
    "founded": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]},
    "size": {"enum": ["small", "medium", "large"]}},
    "required": ["city", "country", "population", "landmarks", "capital", "founded", "size"],
    "additionalProperties": False}
CITY_RF = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": CITY}}
ASK_CITY = [{"role": "user", "content": "Tell me about New York as JSON."}]


def test_strict_json_schema_at_temperature_one(openai_client, model_id):
    """Issue 13: strict json_schema with additionalProperties false (what LangChain and the Agents SDK
    send). Whatever temperature 1 samples (n=4 choices of one seeded request, each its own seed),
    every finished answer parses and matches the schema; only one cut by max_tokens may be incomplete."""
    slow = openai_client.with_options(timeout=900)  # hundreds of tokens; CI machines can be crowded
    r = chat(slow, model_id, ASK_CITY, max_tokens=110, temperature=1, seed=0, n=4, response_format=CITY_RF)
    finished = [c for c in r.choices if c.finish_reason != "length"]
    for c in finished:
        assert c.finish_reason == "stop"
        assert violations(json.loads(c.message.content), CITY) == [], c.message.content
    assert len(finished) >= 2, [c.message.content for c in r.choices]


def test_strings_stay_json_even_when_the_model_wants_raw_newlines(openai_client, model_id, tokens):
    """Issue 13: the old converter let a raw newline into a string value. Push the model hard towards
    newlines; the grammar must only let them out as whitespace between tokens, or escaped."""
    newline = tokens("\n")
    assert len(newline) == 1
    schema = {"type": "object", "properties": {"poem": {"type": "string", "maxLength": 60}},
              "required": ["poem"], "additionalProperties": False}
    r = chat(openai_client.with_options(timeout=900), model_id, [{"role": "user", "content": "A short poem, as JSON."}],
             max_tokens=60,
             temperature=1, seed=0, n=3, logit_bias={str(newline[0]): 8},
             response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    finished = [c for c in r.choices if c.finish_reason == "stop"]
    for c in finished:
        assert violations(json.loads(c.message.content), schema) == [], c.message.content
    assert finished, [c.message.content for c in r.choices]


def test_langchain_with_structured_output(node, model_id):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=40)
        country: str = Field(max_length=40)
        capital: bool

    llm = ChatOpenAI(base_url=node.v1, api_key="x", model=model_id, temperature=0, max_tokens=120, max_retries=0)
    out = llm.with_structured_output(City, method="json_schema", strict=True).invoke("Describe Paris.")
    assert isinstance(out, City)


def test_langchain_structured_output_by_function_calling_and_bind_tools(node, model_id):
    """The other way LangChain asks for structured output on Chat Completions: a forced function call
    (method="function_calling", which sends `tools` and a named `tool_choice`), and bind_tools with
    tool_choice="any" (`required`). Both must come back schema-valid; LangChain parses them itself."""
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=40)
        country: str = Field(max_length=40)
        capital: bool

    llm = ChatOpenAI(base_url=node.v1, api_key="x", model=model_id, temperature=0, max_tokens=120, max_retries=0)
    out = llm.with_structured_output(City, method="function_calling", strict=True).invoke("Describe Paris.")
    assert isinstance(out, City)

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"sunny in {city}"

    msg = llm.bind_tools([get_weather], tool_choice="any").invoke("What is the weather in Paris?")
    assert msg.tool_calls, msg
    call = msg.tool_calls[0]
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str) and call["id"]
    assert get_weather.invoke(call["args"]).startswith("sunny in ")

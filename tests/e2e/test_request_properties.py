"""Hostile and generated requests against a node of this module's own (a crash here must not take the
shared session node with it): the grammar breaks of issue 10, then a property-based test over every
request parameter.

Issue 10, break 1: response_format json_object plus logit_bias -100 on every token that starts with
'{' made llama.cpp throw inside sampling ("Unexpected empty grammar stack after accepting piece") and
std::terminate the node; so did a json_schema const the tokenizer could not produce.
Issue 10, break 2: json_schema {"type": "string", "maxLength": 1000000} overflowed the stack in
llama.cpp's grammar code (segfault).
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from runtime.models.embedded import FILENAME

from ..conftest import seed_home, start_node
from ..schema_check import violations

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
N_VOCAB = 49152
# Every SmolLM2 token whose text starts with '{'.
BRACE_TOKENS = [107, 6150, 26754, 34026, 38894, 39428, 39876, 40343]
ASK_JSON = [{"role": "user", "content": "Describe a cat as JSON."}]
REQUEST_TIMEOUT = 300  # seconds; a hang fails the test instead of blocking it (CI machines can be crowded)


@pytest.fixture(scope="module")
def own_node(tmp_path_factory, model_path):
    home = tmp_path_factory.mktemp("props-home")
    seed_home(home, model_path)
    n = start_node(home, "--model", str(home / "data" / "models" / FILENAME), "--slots", "4",
                   "--ctx-per-slot", "1024", "--keepalive", "0.5")
    yield n
    rc = n.stop()
    assert rc == 0, f"the node did not shut down cleanly (exit {rc}):\n{n.log()[-3000:]}"


@pytest.fixture(scope="module")
def http(own_node):
    with httpx.Client(base_url=own_node.v1, timeout=REQUEST_TIMEOUT) as c:
        yield c


def assert_alive(node, http) -> None:
    """The process is running and a plain request is answered."""
    assert node.proc.poll() is None, f"the node died (exit {node.proc.returncode}):\n{node.log()[-3000:]}"
    r = http.post("/chat/completions", json={"model": MODEL, "max_tokens": 4, "temperature": 0,
                                             "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


def assert_openai_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize("temperature", [0, 1])
def test_json_object_with_every_brace_token_banned(own_node, http, temperature):
    """Break 1 (a). The grammar's constraint outranks the ban: the answer still starts with '{' and,
    when finished, parses."""
    body = {"model": MODEL, "messages": ASK_JSON, "max_tokens": 30, "temperature": temperature, "seed": 1,
            "response_format": {"type": "json_object"}, "logit_bias": {str(t): -100 for t in BRACE_TOKENS}}
    r = http.post("/chat/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["message"]["content"].startswith("{")
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    # Streaming takes the same path.
    with http.stream("POST", "/chat/completions", json={**body, "stream": True}) as s:
        assert s.status_code == 200
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and not any('"error"' in e for e in events)
    assert_alive(own_node, http)


def test_const_with_control_characters_and_surrogates(own_node, http):
    """Break 1 (b). The const is written as JSON escapes, which the tokenizer can produce, and the
    answer decodes to exactly the const."""
    const = "\u0000\u0001\ud7ff"
    schema = {"const": const}
    r = http.post("/chat/completions", json={
        "model": MODEL, "messages": ASK_JSON, "max_tokens": 40, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert json.loads(choice["message"]["content"]) == const
    assert_alive(own_node, http)


@pytest.mark.parametrize("schema, where", [
    ({"type": "string", "maxLength": 1_000_000}, "/maxLength"),
    ({"type": "array", "items": {"type": "string"}, "minItems": 100_000}, "/minItems"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a|b)*$"}}}, "/properties/a/pattern"),
])
def test_over_limit_and_unsupported_schemas_are_refused(own_node, http, schema, where):
    """Break 2. Refused with a 400 naming the keyword's path, before any grammar is built."""
    r = http.post("/chat/completions", json={
        "model": MODEL, "messages": ASK_JSON, "max_tokens": 8,
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}})
    err = assert_openai_error(r, 400, "response_format")
    assert f"at '{where}'" in err["message"]
    assert_alive(own_node, http)


# -- property-based: generated valid and invalid values of every request parameter ------------------

_any_char = st.characters(exclude_categories=())  # control characters and lone surrogates included
_supported_leaves = st.one_of(
    st.sampled_from([{}, {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"},
                     {"type": "null"}, {"type": ["string", "null"]}, {"type": "string", "format": "date"},
                     {"type": "string", "format": "uuid"}]),
    st.builds(lambda lo, hi: {"type": "string", "minLength": lo, "maxLength": hi},
              st.integers(0, 3), st.sampled_from([0, 4, 1000])),
    st.builds(lambda v: {"const": v}, st.text(_any_char, max_size=4)),
    st.builds(lambda vs: {"enum": vs}, st.lists(st.one_of(st.text(_any_char, max_size=3), st.integers(), st.none()),
                                                min_size=1, max_size=4)),
)
# Unsupported features and impossible or over-limit sizes: refused with a 400, never a crash.
_unsupported_leaves = st.sampled_from([
    {"type": "string", "pattern": "^a+$"}, {"type": "number", "minimum": 0}, {"type": "string", "format": "email"},
    {"not": {}}, {"type": "strin"}, False, {"enum": []}, {"type": "string", "maxLength": 1_000_000},
    {"type": "string", "minLength": 5, "maxLength": 2}, {"$ref": "#/$defs/nowhere"}])


def _object(children):
    return st.builds(
        lambda props, req, extra: {"type": "object", "properties": props,
                                   "required": [k for k in props if req], **extra},
        st.dictionaries(st.text(_any_char, max_size=4), children, max_size=3), st.booleans(),
        st.sampled_from([{}, {"additionalProperties": False}, {"additionalProperties": True},
                         {"additionalProperties": {"type": "integer"}}]))


def _array(children):
    return st.builds(lambda items, lo, hi: {"type": "array", "items": items, "minItems": lo, "maxItems": hi},
                     children, st.integers(0, 2), st.sampled_from([2, 3, 101]))


def _schemas(leaves):
    return st.recursive(leaves, lambda c: st.one_of(_object(c), _array(c),
                                                    st.builds(lambda a: {"anyOf": a}, st.lists(c, min_size=1, max_size=3))),
                        max_leaves=5)


def _json_schema(schemas):
    return st.builds(lambda s, strict: {"type": "json_schema", "json_schema": {"name": "g", "strict": strict,
                                                                                "schema": s}},
                     schemas, st.booleans())


_token_ids = st.one_of(st.integers(0, N_VOCAB - 1), st.sampled_from(BRACE_TOKENS))
_brace_ban = {str(t): -100 for t in BRACE_TOKENS}

# Valid values of every parameter...
VALID = {
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "top_k": st.integers(0, 100),
    "min_p": st.floats(0, 1),
    "seed": st.integers(-(2**63), 2**64 - 1),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "repeat_penalty": st.floats(0, 10),
    "max_tokens": st.integers(1, 8),
    "max_completion_tokens": st.integers(1, 8),
    "stop": st.one_of(st.text(_any_char, max_size=3), st.lists(st.text(_any_char, max_size=3), max_size=4)),
    "n": st.integers(1, 2),
    "stream": st.booleans(),
    "logit_bias": st.one_of(st.dictionaries(_token_ids.map(str), st.floats(-100, 100), max_size=6),
                            st.just(_brace_ban)),
    "response_format": st.one_of(st.just({"type": "text"}), st.just({"type": "json_object"}),
                                 _json_schema(_schemas(_supported_leaves))),
    "user": st.text(max_size=5),
    # Chat takes a boolean and top_logprobs, completions an integer: either shape on either route is a
    # case (the other route's shape is a 400 naming the field).
    "logprobs": st.one_of(st.booleans(), st.integers(0, 5)),
    "top_logprobs": st.integers(0, 20),
}
# ... and invalid ones (at most one per request, so the rest of the request is still exercised).
_num = st.floats(allow_nan=False, allow_infinity=False, width=32)
INVALID = {
    "temperature": st.one_of(st.floats(2.001, 1e6), st.floats(-1e6, -0.001), st.just("hot")),
    "top_p": st.one_of(st.floats(1.001, 1e6), st.just(-1)),
    "top_k": st.one_of(st.integers(-3, -1), st.just(1.5), st.just("k")),
    "seed": st.sampled_from([1.5, "s", [1]]),
    "presence_penalty": st.one_of(st.floats(2.001, 1e30), st.just(True)),
    "repeat_penalty": st.one_of(st.floats(10.001, 1e30), st.just(-1)),
    "max_tokens": st.sampled_from([0, -1, "8"]),
    "stop": st.one_of(st.just(5), st.lists(st.text(max_size=2), min_size=17, max_size=20)),
    "n": st.sampled_from([0, 17, "2"]),
    "logit_bias": st.one_of(st.dictionaries(st.integers(N_VOCAB, 10**9).map(str), st.just(1), min_size=1, max_size=2),
                            st.dictionaries(_token_ids.map(str), st.one_of(st.just(101), st.just("x")), min_size=1,
                                            max_size=2),
                            st.just({"abc": 1}), st.just([1, 2])),
    "response_format": st.one_of(_json_schema(_schemas(st.one_of(_supported_leaves, _unsupported_leaves))),
                                 st.sampled_from([{"type": "xml"}, {"type": "json_schema"}, "json", 5,
                                                  {"type": "json_schema", "json_schema": {"schema": 1}}])),
    "logprobs": st.sampled_from([6, -1, "yes", [1]]),
    "top_logprobs": st.sampled_from([21, -1, 2.5, "3"]),
}
_invalid_one = st.sampled_from(sorted(INVALID)).flatmap(lambda k: INVALID[k].map(lambda v: {k: v}))
_params = st.builds(lambda valid, bad: {**valid, **(bad or {})},
                    st.fixed_dictionaries({}, optional=VALID), st.one_of(st.none(), st.none(), _invalid_one))


def _send(http, path: str, body: dict) -> None:
    """One request: a 200 (streamed or not) or a 4xx in the OpenAI error shape; never a 5xx, never a
    hang (the client's timeout), never an error event inside a stream that is not the client's."""
    # json.dumps escapes lone surrogates (generated text has them); a UTF-8 encoder would refuse them.
    content, headers = json.dumps(body), {"Content-Type": "application/json"}
    if body.get("stream"):
        with http.stream("POST", path, content=content, headers=headers) as r:
            if r.status_code == 200:
                events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
                assert events and events[-1] == "[DONE]", events[-3:]
                for e in events[:-1]:
                    err = json.loads(e).get("error")
                    assert err is None or err.get("type") == "invalid_request_error", e
                event("status 200 (stream)")
                return
            r.read()
    else:
        r = http.post(path, content=content, headers=headers)
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text)
    event(f"status {r.status_code}")  # shown by --hypothesis-show-statistics: how many reached the model
    if r.status_code != 200:
        err = r.json()["error"]
        assert set(err) >= {"message", "type", "param", "code"} and err["message"], err
        return
    data = r.json()
    for c in data["choices"]:
        lp = c["logprobs"]
        if body.get("logprobs") is True and "messages" in body:  # chat: one entry per token, each <= 0
            assert all(e["logprob"] <= 0 and len(e["top_logprobs"]) == body.get("top_logprobs", 0)
                       for e in lp["content"]), lp
        elif "prompt" in body and not isinstance(body.get("logprobs"), bool) and body.get("logprobs") is not None:
            assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]), lp
        else:
            assert lp is None, lp
        rf = body.get("response_format")
        if c["finish_reason"] == "stop" and isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema"):
            text = c.get("message", {}).get("content", c.get("text"))
            value = json.loads(text)
            if rf["type"] == "json_schema":
                assert violations(value, rf["json_schema"]["schema"]) == [], (text, rf)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(params=_params, completions=st.booleans())
def test_generated_requests_never_break_the_node(own_node, http, params, completions):
    if "max_tokens" not in params and "max_completion_tokens" not in params:
        params = {**params, "max_tokens": 8}
    if completions:
        _send(http, "/completions", {"model": MODEL, "prompt": "The cat", **params})
    else:
        _send(http, "/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **params})
    assert own_node.proc.poll() is None, f"the node died:\n{own_node.log()[-3000:]}"


def test_node_still_answers_after_everything(own_node, http):
    assert_alive(own_node, http)


# -- property-based: generated tools (the tool-call grammars run the same llama.cpp grammar code) -------

_tool_name = st.from_regex(r"[a-zA-Z0-9_-]{1,12}", fullmatch=True)
_tool = st.builds(
    lambda name, params, strict: {"type": "function",
                                  "function": {"name": name, "parameters": params, "strict": strict}},
    _tool_name,
    st.one_of(_object(_schemas(_supported_leaves)), _object(_schemas(st.one_of(_supported_leaves,
                                                                              _unsupported_leaves)))),
    st.booleans(),
)
_tools = st.lists(_tool, min_size=1, max_size=3, unique_by=lambda t: t["function"]["name"])


def _tool_request(tools, choice, parallel, extra):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Use a tool."}], "tools": tools, **extra}
    if choice == "named":
        body["tool_choice"] = {"type": "function", "function": {"name": tools[-1]["function"]["name"]}}
    elif choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    return body


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tools=_tools, choice=st.sampled_from([None, "auto", "required", "none", "named", "bogus"]),
       parallel=st.sampled_from([None, True, False]),
       extra=st.fixed_dictionaries({}, optional={"temperature": st.floats(0, 2), "seed": st.integers(0, 99),
                                                 "logit_bias": st.just(_brace_ban), "stream": st.booleans(),
                                                 "max_tokens": st.integers(1, 60)}))
def test_generated_tool_requests_never_break_the_node(own_node, http, tools, choice, parallel, extra):
    """Tools with generated schemas (some unenforceable), every tool_choice form, parallel on and off,
    banned braces: a 200 whose calls match their tools' schemas, or a 4xx; the node never dies."""
    body = _tool_request(tools, choice, parallel, {"max_tokens": 40, **extra})
    if body.get("stream"):
        _send(http, "/chat/completions", body)
    else:
        r = http.post("/chat/completions", content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text)
        event(f"tools: status {r.status_code}")
        if r.status_code == 200:
            schemas = {t["function"]["name"]: t["function"] for t in tools}
            for c in r.json()["choices"]:
                for call in c["message"].get("tool_calls") or []:
                    fn = schemas[call["function"]["name"]]
                    args = json.loads(call["function"]["arguments"])
                    if fn["strict"]:  # a strict tool's schema is enforced (an unenforceable one is a 400)
                        assert violations(args, fn["parameters"]) == [], (args, fn)
                    event(f"tools: {c['finish_reason']} with calls")
        else:
            err = r.json()["error"]
            assert err["param"] in ("tool_choice", "messages", "max_tokens") or err["param"].startswith("tools"), err
    assert own_node.proc.poll() is None, f"the node died:\n{own_node.log()[-3000:]}"

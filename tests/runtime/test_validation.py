"""Request-body validation (runtime/validation.py)."""

from __future__ import annotations

import json
import math

import pytest

from runtime.errors import APIError
from runtime.validation import (
    LIMITS,
    parse_embedding_inputs,
    parse_generation,
    parse_json_body,
    parse_messages,
    parse_prompts,
)
from runtime.engine.grammar import grammar_for_response_format
from runtime.engine.events import DEFAULT_MIN_P, DEFAULT_TOP_K

N_VOCAB = 1000


def gen(n_vocab: int | None = N_VOCAB, default_max_tokens: int | None = None, **fields):
    return parse_generation({"model": "m", **fields}, n_vocab, default_max_tokens)


def rejects(fn, *args, param, code="invalid_value") -> APIError:
    with pytest.raises(APIError) as ei:
        fn(*args)
    e = ei.value
    assert e.status == 400
    assert e.type == "invalid_request_error"
    assert e.param == param
    assert e.code == code
    assert e.message
    return e


# -- parse_json_body --------------------------------------------------------------------------------


def test_json_body_object_is_returned():
    assert parse_json_body(b'{"model": "x", "n": 2}') == {"model": "x", "n": 2}


@pytest.mark.parametrize("raw", [b"", b"   \n\t"])
def test_json_body_empty(raw):
    e = rejects(parse_json_body, raw, param=None, code="invalid_json")
    assert "empty" in e.message


@pytest.mark.parametrize("raw", [b"{not json", b'{"a": 1,}', b"\xff\xfe{"])
def test_json_body_not_json(raw):
    rejects(parse_json_body, raw, param=None, code="invalid_json")


@pytest.mark.parametrize("raw", [b"[]", b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_json_body_must_be_object(raw):
    e = rejects(parse_json_body, raw, param=None, code="invalid_json")
    assert "object" in e.message


# -- parse_generation: good inputs ------------------------------------------------------------------


def test_generation_defaults():
    g = gen()
    s = g.sampling
    assert g.model == "m"
    assert (s.temperature, s.top_p, s.top_k, s.min_p) == (1.0, 1.0, DEFAULT_TOP_K, DEFAULT_MIN_P)
    assert s.seed is None
    assert (s.presence_penalty, s.frequency_penalty, s.repeat_penalty) == (0.0, 0.0, 1.0)
    assert s.logit_bias == {}
    assert s.grammar is None
    assert g.max_tokens is None
    assert g.stop == []
    assert g.n == 1
    assert g.stream is False
    assert g.include_usage is False


def test_generation_values_are_read():
    g = gen(temperature=0, top_p=0.5, top_k=7, min_p=0.1, presence_penalty=-2, frequency_penalty=2,
            repeat_penalty=1.3, max_tokens=12, n=3, stream=True, stop=["x", "y"])
    s = g.sampling
    assert s.temperature == 0.0 and isinstance(s.temperature, float)
    assert (s.top_p, s.top_k, s.min_p) == (0.5, 7, 0.1)
    assert (s.presence_penalty, s.frequency_penalty, s.repeat_penalty) == (-2.0, 2.0, 1.3)
    assert (g.max_tokens, g.n, g.stream, g.stop) == (12, 3, True, ["x", "y"])


def test_model_is_stripped():
    assert parse_generation({"model": "  my-model \n"}, None, None).model == "my-model"


def test_default_max_tokens_applies_when_absent():
    assert gen(default_max_tokens=16).max_tokens == 16
    assert gen(default_max_tokens=16, max_tokens=5).max_tokens == 5
    assert gen(default_max_tokens=16, max_tokens=None).max_tokens == 16


def test_max_completion_tokens_wins_over_max_tokens():
    assert gen(max_tokens=100, max_completion_tokens=7).max_tokens == 7
    assert gen(max_completion_tokens=7).max_tokens == 7
    assert gen(default_max_tokens=16, max_completion_tokens=30).max_tokens == 30


def test_integral_float_is_accepted_as_integer():
    g = gen(max_tokens=10.0, n=2.0)
    assert g.max_tokens == 10 and isinstance(g.max_tokens, int)
    assert g.n == 2 and isinstance(g.n, int)


def test_null_fields_mean_defaults():
    g = gen(temperature=None, top_p=None, n=None, stream=None, stop=None, seed=None, logit_bias=None,
            response_format=None, stream_options=None, logprobs=None, tools=None)
    assert g.sampling.temperature == 1.0 and g.n == 1 and g.stream is False and g.stop == []


@pytest.mark.parametrize("seed, expected", [
    (0, 0),
    (42, 42),
    (2**32 - 1, 2**32 - 1),
    (2**32, 0),
    (2**32 + 5, 5),
    (-1, 2**32 - 1),
    (2**64 - 1, 2**32 - 1),
    (-(2**63), 0),
])
def test_seed_is_masked_to_32_bits(seed, expected):
    assert gen(seed=seed).sampling.seed == expected


def test_logit_bias_parsing():
    s = gen(logit_bias={"5": -100, "6": 100, "7": 2.5, "0": 0, str(N_VOCAB - 1): -1}).sampling
    assert s.logit_bias[5] == -math.inf
    assert s.logit_bias[6] == 100.0
    assert s.logit_bias[7] == 2.5
    assert s.logit_bias[0] == 0.0
    assert s.logit_bias[N_VOCAB - 1] == -1.0
    assert set(s.logit_bias) == {0, 5, 6, 7, N_VOCAB - 1}


def test_logit_bias_is_not_checked_before_the_vocabulary_is_known():
    assert gen(n_vocab=None, logit_bias={"999999": 1}).sampling.logit_bias == {}


def test_stop_forms():
    assert gen(stop="END").stop == ["END"]
    assert gen(stop="").stop == []
    assert gen(stop=["a", "", "b"]).stop == ["a", "b"]
    assert gen(stop=[]).stop == []
    assert gen(stop=["s"] * LIMITS.stops).stop == ["s"] * LIMITS.stops


def test_stream_options_include_usage():
    assert gen(stream=True, stream_options={"include_usage": True}).include_usage is True
    assert gen(stream=True, stream_options={"include_usage": False}).include_usage is False
    assert gen(stream=True, stream_options={}).include_usage is False


def test_response_format_becomes_grammar():
    assert gen(response_format={"type": "text"}).sampling.grammar is None
    g = gen(response_format={"type": "json_object"}).sampling.grammar
    assert g == grammar_for_response_format({"type": "json_object"})
    assert "root" in g


def test_harmless_variants_of_unsupported_fields_are_accepted():
    g = gen(logprobs=False, tools=[], functions=[], suffix="", best_of=1)
    assert g.n == 1


def test_unknown_fields_are_ignored():
    g = gen(user="me", metadata={"a": 1}, store=True, parallel_tool_calls=False, whatever=[1, 2])
    assert g.model == "m" and g.n == 1


def test_boundaries_are_inclusive():
    g = gen(temperature=2, top_p=0, min_p=1, n=LIMITS.n, top_k=0, repeat_penalty=10, max_tokens=1)
    assert g.sampling.temperature == 2.0 and g.n == LIMITS.n and g.sampling.top_k == 0 and g.max_tokens == 1


# -- parse_generation: bad inputs -------------------------------------------------------------------


def test_model_missing():
    rejects(parse_generation, {}, None, None, param="model", code="missing_required_parameter")


@pytest.mark.parametrize("model", ["", "   ", 5, ["m"], True])
def test_model_bad(model):
    rejects(parse_generation, {"model": model}, None, None, param="model", code="invalid_type")


@pytest.mark.parametrize("key, value", [
    ("temperature", "hot"),
    ("temperature", True),
    ("temperature", [1]),
    ("top_p", False),
    ("min_p", "0.1"),
    ("presence_penalty", {"v": 1}),
    ("frequency_penalty", True),
    ("repeat_penalty", "1"),
])
def test_numbers_reject_wrong_types(key, value):
    rejects(parse_generation, {"model": "m", key: value}, N_VOCAB, None, param=key, code="invalid_type")


@pytest.mark.parametrize("key, value", [
    ("temperature", -0.1),
    ("temperature", 2.01),
    ("temperature", float("nan")),
    ("temperature", float("inf")),
    ("top_p", 1.5),
    ("min_p", -0.01),
    ("presence_penalty", -2.5),
    ("frequency_penalty", 3),
    ("repeat_penalty", 11),
    ("repeat_penalty", 0),
])
def test_numbers_reject_out_of_range(key, value):
    rejects(parse_generation, {"model": "m", key: value}, N_VOCAB, None, param=key, code="invalid_value")


@pytest.mark.parametrize("key, value", [
    ("max_tokens", True),
    ("max_tokens", "10"),
    ("max_tokens", 1.5),
    ("max_completion_tokens", 2.5),
    ("n", False),
    ("top_k", "40"),
    ("seed", 1.25),
    ("seed", "7"),
])
def test_integers_reject_wrong_types(key, value):
    rejects(parse_generation, {"model": "m", key: value}, N_VOCAB, None, param=key, code="invalid_type")


@pytest.mark.parametrize("key, value", [
    ("max_tokens", 0),
    ("max_tokens", -5),
    ("max_completion_tokens", 0),
    ("n", 0),
    ("n", LIMITS.n + 1),
    ("top_k", -1),
    ("seed", 2**64),
    ("seed", -(2**63) - 1),
])
def test_integers_reject_out_of_range(key, value):
    rejects(parse_generation, {"model": "m", key: value}, N_VOCAB, None, param=key, code="invalid_value")


@pytest.mark.parametrize("value", [1, 0, "true", "yes"])
def test_stream_must_be_boolean(value):
    rejects(parse_generation, {"model": "m", "stream": value}, N_VOCAB, None, param="stream", code="invalid_type")


def test_stream_options_requires_stream():
    rejects(parse_generation, {"model": "m", "stream_options": {"include_usage": True}}, N_VOCAB, None,
            param="stream_options")
    rejects(parse_generation, {"model": "m", "stream": False, "stream_options": {}}, N_VOCAB, None,
            param="stream_options")


def test_stream_options_shape():
    rejects(parse_generation, {"model": "m", "stream": True, "stream_options": True}, N_VOCAB, None,
            param="stream_options", code="invalid_type")
    rejects(parse_generation, {"model": "m", "stream": True, "stream_options": {"include_usage": "yes"}}, N_VOCAB,
            None, param="stream_options.include_usage", code="invalid_type")


@pytest.mark.parametrize("stop", [5, ["a", 1], {"a": 1}, [None], True])
def test_stop_bad_types(stop):
    rejects(parse_generation, {"model": "m", "stop": stop}, N_VOCAB, None, param="stop", code="invalid_type")


def test_stop_too_many():
    rejects(parse_generation, {"model": "m", "stop": ["s"] * (LIMITS.stops + 1)}, N_VOCAB, None, param="stop",
            code="array_above_max_length")


@pytest.mark.parametrize("bias, code", [
    (["5"], "invalid_type"),
    ("5:1", "invalid_type"),
    ({"abc": 1}, "invalid_type"),
    ({"1.5": 1}, "invalid_type"),
    ({"-1": 1}, "invalid_value"),
    ({str(N_VOCAB): 1}, "invalid_value"),
    ({"5": 101}, "invalid_value"),
    ({"5": -100.5}, "invalid_value"),
    ({"5": True}, "invalid_value"),
    ({"5": "1"}, "invalid_value"),
    ({"5": None}, "invalid_value"),
])
def test_logit_bias_bad(bias, code):
    rejects(parse_generation, {"model": "m", "logit_bias": bias}, N_VOCAB, None, param="logit_bias", code=code)


@pytest.mark.parametrize("fields, param", [
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"suffix": "end"}, "suffix"),
    ({"best_of": 2}, "best_of"),
])
def test_unsupported_parameters(fields, param):
    rejects(parse_generation, {"model": "m", **fields}, N_VOCAB, None, param=param, code="unsupported_parameter")


def test_unsupported_parameters_are_reported_before_other_errors():
    # Even without a model: the client learns first that the feature itself is unavailable.
    rejects(parse_generation, {"suffix": "x"}, None, None, param="suffix", code="unsupported_parameter")


@pytest.mark.parametrize("fields, endpoint, want", [
    ({}, "chat", None),
    ({"logprobs": False}, "chat", None),
    ({"logprobs": True}, "chat", 0),
    ({"logprobs": True, "top_logprobs": 0}, "chat", 0),
    ({"logprobs": True, "top_logprobs": 20}, "chat", 20),
    ({}, "completion", None),
    ({"logprobs": 0}, "completion", 0),
    ({"logprobs": 5}, "completion", 5),
])
def test_logprobs_are_parsed_per_endpoint(fields, endpoint, want):
    """Issue 13: chat takes logprobs (bool) + top_logprobs (0-20); completions the legacy int (0-5)."""
    gp = parse_generation({"model": "m", **fields}, N_VOCAB, None, endpoint)
    assert gp.sampling.logprobs == want


@pytest.mark.parametrize("fields, endpoint, param, code", [
    ({"top_logprobs": 3}, "chat", "top_logprobs", "invalid_value"),
    ({"logprobs": False, "top_logprobs": 0}, "chat", "top_logprobs", "invalid_value"),
    ({"logprobs": True, "top_logprobs": 21}, "chat", "top_logprobs", "invalid_value"),
    ({"logprobs": True, "top_logprobs": -1}, "chat", "top_logprobs", "invalid_value"),
    ({"logprobs": 3}, "chat", "logprobs", "invalid_type"),
    ({"logprobs": 6}, "completion", "logprobs", "invalid_value"),
    ({"logprobs": True}, "completion", "logprobs", "invalid_type"),
])
def test_bad_logprobs(fields, endpoint, param, code):
    rejects(parse_generation, {"model": "m", **fields}, N_VOCAB, None, endpoint, param=param, code=code)


@pytest.mark.parametrize("rf, code", [
    ("json_object", "invalid_type"),
    (["json_object"], "invalid_type"),
    ({"type": "xml"}, "invalid_value"),
    ({"type": "json_schema"}, "invalid_value"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "invalid_value"),
    ({"type": "json_schema", "json_schema": {"schema": "not an object"}}, "invalid_value"),
])
def test_response_format_bad(rf, code):
    rejects(parse_generation, {"model": "m", "response_format": rf}, N_VOCAB, None, param="response_format",
            code=code)


# -- parse_messages ---------------------------------------------------------------------------------


def test_messages_roles_and_contents():
    out = parse_messages({"messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi", "name": "bob"},
        {"role": "assistant", "content": "hello"},
    ]})
    assert out == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]


def test_messages_text_parts_are_joined():
    out = parse_messages({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Hello, "},
        {"type": "text", "text": "world", "extra": 1},
        {"type": "text", "text": ""},
    ]}]})
    assert out == [{"role": "user", "content": "Hello, world"}]


def test_messages_empty_parts_list_gives_empty_text():
    assert parse_messages({"messages": [{"role": "user", "content": []}]}) == [{"role": "user", "content": ""}]


def test_assistant_content_may_be_null():
    out = parse_messages({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None},
                                       {"role": "assistant"}]})
    assert out[1] == {"role": "assistant", "content": ""}
    assert out[2] == {"role": "assistant", "content": ""}


def test_messages_missing():
    rejects(parse_messages, {}, param="messages", code="missing_required_parameter")
    rejects(parse_messages, {"messages": None}, param="messages", code="missing_required_parameter")


@pytest.mark.parametrize("msgs", ["hi", {"role": "user"}, 3])
def test_messages_not_array(msgs):
    rejects(parse_messages, {"messages": msgs}, param="messages", code="invalid_type")


def test_messages_empty():
    rejects(parse_messages, {"messages": []}, param="messages", code="empty_array")


@pytest.mark.parametrize("msg", ["hi", ["user", "hi"], None])
def test_message_not_object(msg):
    rejects(parse_messages, {"messages": [{"role": "user", "content": "ok"}, msg]}, param="messages[1]",
            code="invalid_type")


@pytest.mark.parametrize("role", ["function"])
def test_message_function_roles_unsupported(role):
    rejects(parse_messages, {"messages": [{"role": role, "content": "x"}]}, param="messages[0].role",
            code="unsupported_parameter")


@pytest.mark.parametrize("role", [None, "robot", "User", 1])
def test_message_bad_role(role):
    rejects(parse_messages, {"messages": [{"role": role, "content": "x"}]}, param="messages[0].role")


@pytest.mark.parametrize("role", ["user", "system", "developer"])
def test_message_content_required_except_for_assistant(role):
    rejects(parse_messages, {"messages": [{"role": role}]}, param="messages[0].content",
            code="missing_required_parameter")


@pytest.mark.parametrize("content", [5, {"type": "text", "text": "x"}, True])
def test_message_content_bad_type(content):
    rejects(parse_messages, {"messages": [{"role": "user", "content": content}]}, param="messages[0].content",
            code="invalid_type")


@pytest.mark.parametrize("part_type", ["image_url", "input_audio", "file"])
def test_message_non_text_parts_unsupported(part_type):
    rejects(parse_messages, {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "look:"}, {"type": part_type, part_type: {"url": "http://x/y.png"}}]}]},
        param="messages[0].content[1]", code="unsupported_content")


@pytest.mark.parametrize("part", ["text", {"text": "no type"}, None])
def test_message_part_without_type(part):
    rejects(parse_messages, {"messages": [{"role": "user", "content": [part]}]}, param="messages[0].content[0]",
            code="invalid_type")


@pytest.mark.parametrize("text", [None, 5, ["a"]])
def test_message_text_part_text_must_be_string(text):
    part = {"type": "text"} if text is None else {"type": "text", "text": text}
    rejects(parse_messages, {"messages": [{"role": "user", "content": [part]}]},
            param="messages[0].content[0].text", code="invalid_type")


def test_message_error_names_the_right_index():
    rejects(parse_messages, {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                          {"role": "user", "content": 7}]}, param="messages[2].content",
            code="invalid_type")


# -- parse_prompts ----------------------------------------------------------------------------------


def test_prompts_forms():
    assert parse_prompts({"prompt": "hello"}) == ["hello"]
    assert parse_prompts({"prompt": ""}) == [""]
    assert parse_prompts({"prompt": ["a", "b"]}) == ["a", "b"]
    assert parse_prompts({"prompt": [1, 2, 3]}) == [[1, 2, 3]]
    assert parse_prompts({"prompt": [[1, 2], [3]]}) == [[1, 2], [3]]


def test_prompts_missing():
    rejects(parse_prompts, {}, param="prompt", code="missing_required_parameter")


@pytest.mark.parametrize("prompt", [[], 5, {"a": 1}, ["a", 1], [True, False], [[1], []], [[1, "a"]], [[True]],
                                    [[1], 2], [1.0, 2.0]])
def test_prompts_bad(prompt):
    rejects(parse_prompts, {"prompt": prompt}, param="prompt", code="invalid_type")


# -- parse_embedding_inputs -------------------------------------------------------------------------


def test_embedding_inputs_forms():
    assert parse_embedding_inputs({"input": "hello"}) == ["hello"]
    assert parse_embedding_inputs({"input": ["a", "b"]}) == ["a", "b"]
    assert parse_embedding_inputs({"input": [1, 2, 3]}) == [[1, 2, 3]]
    assert parse_embedding_inputs({"input": [[1, 2], [3]]}) == [[1, 2], [3]]
    assert parse_embedding_inputs({"input": "x", "encoding_format": "base64"}) == ["x"]
    assert parse_embedding_inputs({"input": "x", "dimensions": None, "user": "u"}) == ["x"]
    assert len(parse_embedding_inputs({"input": ["x"] * 2048})) == 2048


def test_embedding_input_missing():
    rejects(parse_embedding_inputs, {}, param="input", code="missing_required_parameter")


@pytest.mark.parametrize("inp", [[], 5, {"a": 1}, ["a", 1], [True], [[1], []], [[1], "a"]])
def test_embedding_input_bad_shape(inp):
    rejects(parse_embedding_inputs, {"input": inp}, param="input", code="invalid_type")


@pytest.mark.parametrize("inp", ["", ["a", ""]])
def test_embedding_input_empty_text(inp):
    e = rejects(parse_embedding_inputs, {"input": inp}, param="input")
    assert "empty" in e.message


def test_embedding_input_too_many():
    e = rejects(parse_embedding_inputs, {"input": ["x"] * (LIMITS.embedding_inputs + 1)}, param="input",
                code="array_above_max_length")
    assert str(LIMITS.embedding_inputs) in e.message


@pytest.mark.parametrize("fmt", ["int8", "FLOAT", 1])
def test_embedding_bad_encoding_format(fmt):
    rejects(parse_embedding_inputs, {"input": "x", "encoding_format": fmt}, param="encoding_format")


def test_embedding_dimensions_unsupported():
    rejects(parse_embedding_inputs, {"input": "x", "dimensions": 256}, param="dimensions",
            code="unsupported_parameter")


@pytest.mark.parametrize("inp", [[["hello"]], [[1.5]], [[True]], [[None]]])
def test_embedding_nested_arrays_must_hold_token_ids(inp):
    rejects(parse_embedding_inputs, {"input": inp}, param="input", code="invalid_type")


# -- limits (issue 10): checked before any work, each naming the field and the limit ---------------------


def test_limits_are_generous():
    """What a demanding real client sends stays far inside (OpenAI's own limits, where it has them)."""
    assert LIMITS.messages >= 2048 and LIMITS.prompts >= 2048 and LIMITS.embedding_inputs >= 2048
    assert LIMITS.stops >= 4 and LIMITS.logit_bias >= 300 and LIMITS.n >= 16
    assert LIMITS.text_chars >= 1_000_000 and LIMITS.token_ids >= 128 * 1024 and LIMITS.json_depth >= 32


def test_too_many_messages():
    msgs = [{"role": "user", "content": ""}] * (LIMITS.messages + 1)
    e = rejects(parse_messages, {"messages": msgs}, param="messages", code="array_above_max_length")
    assert f"at most {LIMITS.messages}" in e.message
    assert len(parse_messages({"messages": msgs[:-1]})) == LIMITS.messages


def test_message_text_is_bounded_in_total():
    half = "x" * (LIMITS.text_chars // 2)
    assert len(parse_messages({"messages": [{"role": "user", "content": half}] * 2})) == 2
    e = rejects(parse_messages, {"messages": [{"role": "user", "content": half}] * 2 + [
        {"role": "user", "content": [{"type": "text", "text": "y"}]}]}, param="messages",
                code="string_above_max_length")
    assert str(LIMITS.text_chars) in e.message


def test_too_many_prompts():
    e = rejects(parse_prompts, {"prompt": ["a"] * (LIMITS.prompts + 1)}, param="prompt",
                code="array_above_max_length")
    assert str(LIMITS.prompts) in e.message
    rejects(parse_prompts, {"prompt": [[1]] * (LIMITS.prompts + 1)}, param="prompt", code="array_above_max_length")


def test_prompts_times_n_is_bounded():
    prompts = ["a"] * (LIMITS.choices // LIMITS.n)
    assert len(parse_prompts({"prompt": prompts, "n": LIMITS.n})) == len(prompts)
    e = rejects(parse_prompts, {"prompt": prompts + ["b"], "n": LIMITS.n}, param="n", code="array_above_max_length")
    assert "prompts × n" in e.message and str(LIMITS.choices) in e.message
    rejects(parse_prompts, {"prompt": prompts + ["b"], "n": float(LIMITS.n)}, param="n",
            code="array_above_max_length")  # an integral float is an integer to parse_generation too


def test_prompt_token_ids_are_bounded():
    assert parse_prompts({"prompt": [1] * LIMITS.token_ids}) == [[1] * LIMITS.token_ids]
    rejects(parse_prompts, {"prompt": [1] * (LIMITS.token_ids + 1)}, param="prompt", code="array_above_max_length")
    half = [1] * (LIMITS.token_ids // 2 + 1)
    rejects(parse_prompts, {"prompt": [half, half]}, param="prompt", code="array_above_max_length")
    rejects(parse_embedding_inputs, {"input": [half, half]}, param="input", code="array_above_max_length")


def test_prompt_text_is_bounded_in_total():
    half = "x" * (LIMITS.text_chars // 2 + 1)
    rejects(parse_prompts, {"prompt": [half, half]}, param="prompt", code="string_above_max_length")
    rejects(parse_embedding_inputs, {"input": [half, half]}, param="input", code="string_above_max_length")


def test_stop_string_length_is_bounded():
    assert gen(stop="s" * LIMITS.stop_chars).stop == ["s" * LIMITS.stop_chars]
    e = rejects(parse_generation, {"model": "m", "stop": ["ok", "s" * (LIMITS.stop_chars + 1)]}, N_VOCAB, None,
                param="stop", code="string_above_max_length")
    assert "stop[1]" in e.message and str(LIMITS.stop_chars) in e.message


def test_logit_bias_size_is_bounded_even_before_the_vocabulary_is_known():
    big = {str(i): 1 for i in range(LIMITS.logit_bias + 1)}
    for n_vocab in (None, 10 * LIMITS.logit_bias):
        e = rejects(parse_generation, {"model": "m", "logit_bias": big}, n_vocab, None, param="logit_bias",
                    code="array_above_max_length")
        assert str(LIMITS.logit_bias) in e.message
    assert len(gen(n_vocab=10 * LIMITS.logit_bias,
                   logit_bias={str(i): 1 for i in range(LIMITS.logit_bias)}).sampling.logit_bias) == LIMITS.logit_bias


@pytest.mark.parametrize("fields, param", [
    ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "\udc00"}]},
     "messages[1].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]}, "messages[0].content[0].text"),
])
def test_lone_surrogate_in_messages(fields, param):
    e = rejects(parse_messages, fields, param=param, code="invalid_unicode")
    assert "unpaired UTF-16 surrogate" in e.message and param in e.message


@pytest.mark.parametrize("fn, body, param", [
    (parse_prompts, {"prompt": "\ud800"}, "prompt"),
    (parse_prompts, {"prompt": ["a", "\ud800"]}, "prompt[1]"),
    (parse_embedding_inputs, {"input": "\ud800"}, "input"),
    (parse_embedding_inputs, {"input": ["a", "b\udfff"]}, "input[1]"),
])
def test_lone_surrogate_in_prompts_and_inputs(fn, body, param):
    rejects(fn, body, param=param, code="invalid_unicode")


def test_lone_surrogate_in_stop():
    rejects(parse_generation, {"model": "m", "stop": ["\ud800"]}, N_VOCAB, None, param="stop",
            code="invalid_unicode")


def test_paired_surrogates_and_other_unicode_are_fine():
    text = "h\u00e9llo \U0001F600 \u4f60\u597d"
    assert parse_messages({"messages": [{"role": "user", "content": text}]})[0]["content"] == text
    assert parse_prompts({"prompt": text}) == [text]


def nested(depth: int) -> bytes:
    return b'{"model": "m", "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_json_nesting_at_the_limit_is_accepted():
    assert parse_json_body(nested(LIMITS.json_depth))["model"] == "m"


@pytest.mark.parametrize("depth", [LIMITS.json_depth + 1, 5000, 200_000])
def test_json_nesting_past_the_limit_is_refused(depth):
    e = rejects(parse_json_body, nested(depth), param=None, code="json_too_deep")
    assert str(LIMITS.json_depth) in e.message


def test_brackets_in_strings_are_not_nesting():
    raw = json.dumps({"model": "m", "content": "[{" * 10_000, "x": [[1]]}).encode()
    assert parse_json_body(raw)["x"] == [[1]]

"""response_format -> GBNF (runtime/engine/grammar.py): the supported-feature check and the converter.

That llama.cpp parses these grammars, and that the model's output under them parses as JSON and
matches the schema, is proved with the real model in tests/runtime/test_sampling.py and
tests/e2e/test_sampling_params.py.
"""

from __future__ import annotations

import json
import re

import pytest

from runtime.engine.grammar import (
    MAX_ARRAY_ITEMS, MAX_DEPTH, MAX_ENUM_VALUES, MAX_LITERAL_CHARS, MAX_PROPERTIES, MAX_STRING_LENGTH,
    MAX_SUBSCHEMAS, SchemaError, gbnf_literal, grammar_for_response_format, json_text, schema_problems,
    schema_to_gbnf,
)

ROOT_RULE = re.compile(r"^root\s*::=", re.MULTILINE)


def rf_schema(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": schema}}


def rules(grammar: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in grammar.strip().splitlines())


@pytest.mark.parametrize("rf", [None, {}, {"type": "text"}, {"type": None}, {"json_schema": {"schema": {}}}])
def test_plain_text_has_no_grammar(rf):
    assert grammar_for_response_format(rf) is None


def test_json_object_grammar():
    g = grammar_for_response_format({"type": "json_object"})
    assert ROOT_RULE.search(g)
    assert rules(g)["root"] == "object"


def test_strings_follow_json_rules():
    """Issue 13: no raw control character (newline included) inside a string; escapes only."""
    r = rules(grammar_for_response_format({"type": "json_object"}))
    assert r["char"] == r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
    assert r["string"] == r'"\"" char* "\"" space'
    # Bounded strings use the same character rule.
    r = rules(schema_to_gbnf({"type": "string", "maxLength": 5}))
    assert r["root-value"] == r'"\"" char{0,5} "\"" space' and "char" in r


def test_json_schema_grammar():
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    g = grammar_for_response_format(rf_schema(schema))
    r = rules(g)
    assert r["root-value"] == ('"{" space root-value-name-kv "," space root-value-age-kv "}" space')
    assert r["root-value-name-kv"] == r'"\"name\"" space ":" space string'
    assert r["root-value-age-kv"] == r'"\"age\"" space ":" space integer'


def test_optional_properties_are_any_ordered_subset_linear_in_size():
    schema = {"type": "object", "properties": {k: {"type": "boolean"} for k in "abc"}, "required": ["b"]}
    r = rules(schema_to_gbnf(schema))
    assert r["root-value"] == ('"{" space root-value-b-kv ("," space (root-value-a-kv root-value-rest-1 | '
                               'root-value-c-kv))? "}" space')
    assert r["root-value-rest-1"] == '("," space root-value-c-kv)?'
    many = {"type": "object", "properties": {f"p{i}": {"type": "null"} for i in range(MAX_PROPERTIES)}}
    assert len(schema_to_gbnf(many)) < 40_000


def test_literals_are_escaped_json_text():
    """A const or enum value is written as JSON text, and that text as a GBNF literal: backslashes,
    quotes, control characters and lone surrogates all become escapes the tokenizer can write
    (issue 10: {"const": "\\u0000\\u0001\\ud7ff"} used to demand a raw NUL and abort the node)."""
    assert json_text("\u0000\u0001\ud7ff") == '"\\u0000\\u0001\ud7ff"'
    assert json_text("\ud800x\x7f") == '"\\ud800x\\u007f"'
    assert json.loads(json_text("\ud800x\x7f")) == "\ud800x\x7f"
    assert gbnf_literal('"a\\b"\n') == r'"\"a\\b\"\n"'
    g = schema_to_gbnf({"const": "\u0000\u0001\ud7ff"})
    assert "\x00" not in g and "\x01" not in g
    g.encode("utf-8")  # no lone surrogate left in the grammar text
    assert rules(g)["root-value"] == '"\\"\\\\u0000\\\\u0001\ud7ff\\"" space'
    enum = rules(schema_to_gbnf({"enum": ["a\\b", 1, None, {"k": [True]}]}))["root-value"]
    assert enum == r'("\"a\\\\b\"" | "1" | "null" | "{\"k\":[true]}") space'


def test_extra_members_never_repeat_a_named_key():
    """With additionalProperties, an extra key equal to a named one would replace its value when
    parsed (json.loads keeps the last): extra keys exclude the names (a prefix tree of them)."""
    r = rules(schema_to_gbnf({"type": "object", "properties": {"a": {"type": "integer"}, "ab": {"type": "null"}},
                              "additionalProperties": {"type": "string"}}))
    key = r["root-value-extra-key"]
    plain = r'[^"\\\x7F\x00-\x1F]'
    assert key == (r'"\"" ([\U00000061] ([\U00000062] ([^"\\\x7F\x00-\x1F] ' + plain + '*) | '
                   r'[^"\\\x7F\x00-\x1F\U00000062] ' + plain + '*) | '
                   r'[^"\\\x7F\x00-\x1F\U00000061] ' + plain + r'*)? "\"" space')
    assert r["root-value-extra-kv"] == 'root-value-extra-key ":" space string'


def test_recursive_refs_become_recursive_rules():
    tree = {"$defs": {"node": {"type": "object", "properties": {
        "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["v", "kids"], "additionalProperties": False}}, "$ref": "#/$defs/node"}
    r = rules(schema_to_gbnf(tree))
    assert r["root"] == "ref-node"
    assert "ref-node" in r["ref-node-kids"]


def test_langchain_pydantic_style_schema_is_supported():
    """What LangChain's with_structured_output(strict=True) sends for a nested Pydantic model."""
    schema = {
        "$defs": {"Address": {"properties": {"city": {"title": "City", "type": "string"},
                                             "zip": {"anyOf": [{"type": "string"}, {"type": "null"}],
                                                     "default": None, "title": "Zip"}},
                              "required": ["city", "zip"], "title": "Address", "type": "object",
                              "additionalProperties": False}},
        "properties": {"name": {"description": "full name", "title": "Name", "type": "string"},
                       "tags": {"items": {"type": "string"}, "title": "Tags", "type": "array"},
                       "kind": {"enum": ["a", "b"], "title": "Kind", "type": "string"},
                       "when": {"format": "date-time", "type": "string"},
                       "address": {"$ref": "#/$defs/Address"}},
        "required": ["name", "tags", "kind", "when", "address"], "title": "Person", "type": "object",
        "additionalProperties": False}
    assert schema_problems(schema) == []
    assert ROOT_RULE.search(grammar_for_response_format(rf_schema(schema)))


def test_arrays_bounds_and_tuples():
    r = rules(schema_to_gbnf({"type": "array", "items": {"type": "null"}, "minItems": 2, "maxItems": 4}))
    assert r["root-value"] == '"[" space null ("," space null){1,3} "]" space'
    r = rules(schema_to_gbnf({"type": "array", "items": {"type": "null"}, "maxItems": 1}))
    assert r["root-value"] == '"[" space (null)? "]" space'
    r = rules(schema_to_gbnf({"type": "array", "prefixItems": [{"type": "null"}, {"type": "boolean"}],
                              "items": False}))
    assert r["root-value"] == '"[" space null "," space boolean "]" space'


def problems(schema) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in schema_problems(schema)]


@pytest.mark.parametrize("schema, path, words", [
    # issue 10: the segfault (a million nested groups)
    ({"type": "string", "maxLength": 1_000_000}, "/maxLength", "limit of 1000"),
    ({"type": "string", "minLength": MAX_STRING_LENGTH + 1}, "/minLength", "limit"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, "/minLength", "greater than"),
    ({"type": "string", "maxLength": -1}, "/maxLength", "non-negative integer"),
    ({"type": "string", "maxLength": 2.5}, "/maxLength", "non-negative integer"),
    ({"type": "string", "pattern": "^a+$"}, "/pattern", "'pattern' is not supported"),
    ({"type": "string", "format": "email"}, "/format", "'email' is not supported"),
    ({"type": "string", "format": "date", "maxLength": 3}, "", "beside 'format'"),
    ({"type": "number", "minimum": 0}, "/minimum", "'minimum' is supported on integers only"),
    ({"type": "integer", "multipleOf": 2}, "/multipleOf", "not supported"),
    ({"type": "array", "items": {}, "maxItems": MAX_ARRAY_ITEMS + 1}, "/maxItems", "limit"),
    ({"type": "array", "items": {}, "minItems": 3, "maxItems": 1}, "/minItems", "greater than"),
    ({"type": "array", "items": {}, "uniqueItems": True}, "/uniqueItems", "not supported"),
    ({"type": "array", "items": [{}, {}]}, "/items", "prefixItems"),
    ({"type": "array", "items": False, "minItems": 1}, "/items", "allows no item"),
    ({"type": "array", "prefixItems": [{}], "items": {}}, "/items", "must be false"),
    ({"type": "object", "properties": {"a": {"type": "strin"}}}, "/properties/a/type", "must be one of"),
    ({"type": ["string", "string"]}, "/type", "distinct"),
    ({"type": "object", "properties": {f"p{i}": {} for i in range(MAX_PROPERTIES + 1)}}, "/properties", "limit"),
    ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "/required", "'b' is not defined"),
    ({"type": "object", "patternProperties": {"^x": {}}}, "/patternProperties", "not supported"),
    ({"type": "object", "properties": {"a/b": {"not": {}}}}, "/properties/a~1b/not", "'not' is not supported"),
    ({"enum": []}, "/enum", "non-empty"),
    ({"enum": list(range(MAX_ENUM_VALUES + 1))}, "/enum", "limit"),
    ({"const": "x" * MAX_LITERAL_CHARS}, "/const", "characters of JSON"),
    ({"anyOf": []}, "/anyOf", "non-empty"),
    ({"anyOf": [{"type": "null"}], "type": "object"}, "", "beside 'anyOf'"),
    ({"allOf": [{"type": "null"}]}, "/allOf", "not supported"),
    ({"$ref": "#/$defs/missing"}, "/$ref", "does not resolve"),
    ({"$ref": "https://example.com/s.json"}, "/$ref", "only local references"),
    ({"$ref": "#/$defs/a", "$defs": {"a": {"type": "null"}}, "type": "string"}, "", "beside '$ref'"),
    ({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}, {"type": "null"}]}, "b": {"$ref": "#/$defs/a"}},
      "$ref": "#/$defs/a"}, "", "refers back to itself"),
    ({"properties": {"a": False}}, "/properties/a", "accepts no value"),
    ({"properties": {"a": 5}}, "/properties/a", "must be an object or a boolean"),
    ({"properties": {"n" * 300: {}}}, "/properties/" + "n" * 40 + "...", "the limit is 256"),
])
def test_unsupported_features_and_sizes_are_named_with_their_path(schema, path, words):
    found = problems(schema)
    assert any(p == path and words in m for p, m in found), found
    with pytest.raises(SchemaError) as e:
        grammar_for_response_format(rf_schema(schema))
    msg = str(e.value)
    assert msg.startswith("response_format.json_schema.schema cannot be enforced:")
    assert f"at '{path or '/'}'" in msg


def test_nesting_and_size_limits():
    deep: dict = {"type": "null"}
    for _ in range(MAX_DEPTH + 1):
        deep = {"type": "array", "items": deep}
    assert any("nested more than" in m for _, m in problems(deep))
    wide = {"type": "object", "properties": {
        f"p{i}": {"type": "object", "properties": {f"q{j}": {"type": "null"} for j in range(50)}}
        for i in range(MAX_SUBSCHEMAS // 50 + 1)}}
    assert any(f"more than {MAX_SUBSCHEMAS} subschemas" in m for _, m in problems(wide))


def test_limits_themselves_are_accepted():
    ok = {"type": "object", "properties": {
        "s": {"type": "string", "minLength": 1, "maxLength": MAX_STRING_LENGTH},
        "a": {"type": "array", "items": {"type": "integer"}, "maxItems": MAX_ARRAY_ITEMS},
        "e": {"enum": list(range(MAX_ENUM_VALUES))},
        "c": {"const": "x" * (MAX_LITERAL_CHARS - 2)}}}
    assert problems(ok) == []
    assert ROOT_RULE.search(schema_to_gbnf(ok))


def test_at_most_five_problems_are_spelled_out():
    schema = {f"kw{i}": 1 for i in range(8)}
    with pytest.raises(SchemaError, match="and 3 more$"):
        schema_to_gbnf(schema)


@pytest.mark.parametrize("rf", [
    {"type": "json_schema"},
    {"type": "json_schema", "json_schema": None},
    {"type": "json_schema", "json_schema": "schema"},
    {"type": "json_schema", "json_schema": {"name": "x"}},
    {"type": "json_schema", "json_schema": {"schema": ["not", "an", "object"]}},
    {"type": "json_schema", "json_schema": {"schema": True}},
])
def test_json_schema_bad_shape(rf):
    with pytest.raises(SchemaError, match="json_schema.schema"):
        grammar_for_response_format(rf)


@pytest.mark.parametrize("kind", ["xml", "JSON_OBJECT", "json", 5, ["json_object"]])
def test_unknown_type(kind):
    with pytest.raises(SchemaError, match="unknown response_format type"):
        grammar_for_response_format({"type": kind})


def test_schema_error_is_a_value_error():
    assert issubclass(SchemaError, ValueError)


@pytest.mark.parametrize("lo, hi", [(0, 30), (5, 123), (-17, 42), (None, -3), (7, None), (-100, -5), (0, 0),
                                    (999, 1001), (-5, None)])
def test_integer_bounds_match_exactly_the_integers_in_range(lo, hi):
    """The range alternation, read as a regular expression, accepts exactly the integers in [lo, hi] in
    JSON's spelling (no leading zeros), checked over every integer from -1200 to 1200."""
    import re

    from runtime.engine.grammar import integer_range_gbnf

    g = re.sub(r'"(-|\d)"', r"\1", integer_range_gbnf(lo, hi)).replace(" ", "")
    rx = re.compile(f"^({g})$")
    for v in range(-1200, 1200):
        assert bool(rx.match(str(v))) == ((lo is None or v >= lo) and (hi is None or v <= hi)), v
    assert not any(rx.match(x) for x in ("01", "-0", "00", "-01"))


def test_integer_bounds_are_checked():
    from runtime.engine.grammar import schema_problems

    assert schema_problems({"type": "integer", "minimum": 0, "maximum": 30, "exclusiveMaximum": 31}) == []
    assert "integers only" in str(schema_problems({"type": "number", "minimum": 0})[0])
    assert "no integer" in str(schema_problems({"type": "integer", "minimum": 5, "maximum": 3})[0])
    assert "within" in str(schema_problems({"type": "integer", "maximum": 10**20})[0])

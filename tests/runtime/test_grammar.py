"""response_format -> GBNF (runtime/engine/grammar.py)."""

from __future__ import annotations

import re

import pytest

from runtime.engine.grammar import SchemaError, grammar_for_response_format

ROOT_RULE = re.compile(r"^root\s*::=", re.MULTILINE)


@pytest.mark.parametrize("rf", [None, {}, {"type": "text"}, {"type": None}, {"json_schema": {"schema": {}}}])
def test_plain_text_has_no_grammar(rf):
    assert grammar_for_response_format(rf) is None


def test_json_object_grammar():
    g = grammar_for_response_format({"type": "json_object"})
    assert isinstance(g, str)
    assert ROOT_RULE.search(g)
    assert "object" in g and "string" in g


def test_json_schema_grammar():
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    g = grammar_for_response_format({"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    assert isinstance(g, str)
    assert ROOT_RULE.search(g)
    # The property names are literals in the grammar.
    assert "name" in g and "age" in g
    assert g != grammar_for_response_format({"type": "json_object"})


def test_json_schema_enum_values_appear_in_grammar():
    g = grammar_for_response_format({"type": "json_schema", "json_schema": {
        "schema": {"type": "string", "enum": ["red", "green"]}}})
    assert ROOT_RULE.search(g)
    assert "red" in g and "green" in g


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


def test_json_schema_the_converter_cannot_handle():
    rf = {"type": "json_schema", "json_schema": {"schema": {
        "type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}}}}
    with pytest.raises(SchemaError, match="unsupported JSON schema"):
        grammar_for_response_format(rf)


@pytest.mark.parametrize("kind", ["xml", "JSON_OBJECT", "json", 5, ["json_object"]])
def test_unknown_type(kind):
    with pytest.raises(SchemaError, match="unknown response_format type"):
        grammar_for_response_format({"type": kind})


def test_schema_error_is_a_value_error():
    assert issubclass(SchemaError, ValueError)

"""response_format → GBNF grammar (so constrained output always parses)."""

from __future__ import annotations

import json

from .gbnf import JSON_GBNF, json_schema_to_gbnf


class SchemaError(ValueError):
    pass


def grammar_for_response_format(response_format: dict | None) -> str | None:
    """None for plain text; a GBNF grammar for ``json_object`` and ``json_schema``."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return JSON_GBNF
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise SchemaError("response_format.json_schema.schema must be a JSON Schema object")
        try:
            return json_schema_to_gbnf(json.dumps(spec["schema"]))
        except Exception as e:  # the converter raises plain exceptions for unsupported constructs
            raise SchemaError(f"unsupported JSON schema: {e}") from None
    raise SchemaError(f"unknown response_format type {kind!r}; use 'text', 'json_object' or 'json_schema'")

"""An independent JSON Schema check for the subset runtime/engine/grammar.py supports, used by tests
to verify model output (the jsonschema package is not a dependency). Written from the JSON Schema
spec, not from the grammar converter, so the two can disagree and a test can catch it."""

from __future__ import annotations

import re
import uuid
from typing import Any

_DATE = r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
_TIME = r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{3})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)"
_FORMATS = {"date": re.compile(f"^{_DATE}$"), "time": re.compile(f"^{_TIME}$"),
            "date-time": re.compile(f"^{_DATE}T{_TIME}$")}


def _type_ok(value: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return {"string": str, "boolean": bool, "null": type(None), "object": dict, "array": list}[t] is type(value)


def violations(value: Any, schema: Any, root: Any = None, path: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (empty: it conforms)."""
    root = schema if root is None else root
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{path}: no value is allowed"]
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return violations(value, target, root, path)
    out: list[str] = []
    if "const" in schema and value != schema["const"]:
        out.append(f"{path}: {value!r} is not the const {schema['const']!r}")
    if "enum" in schema and not any(value == v and type(value) is type(v) for v in schema["enum"]):
        out.append(f"{path}: {value!r} is not in the enum")
    for key in ("anyOf", "oneOf"):
        if key in schema and all(violations(value, s, root, path) for s in schema[key]):
            out.append(f"{path}: matches none of {key}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, t) for t in types):
            return out + [f"{path}: {value!r} is not of type {schema['type']}"]
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            out.append(f"{path}: length {len(value)} is outside the bounds")
        fmt = schema.get("format")
        if fmt == "uuid":
            try:
                uuid.UUID(value)
            except ValueError:
                out.append(f"{path}: not a uuid")
        elif fmt in _FORMATS and not _FORMATS[fmt].match(value):
            out.append(f"{path}: not a {fmt}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for r in schema.get("required", []):
            if r not in value:
                out.append(f"{path}: missing required {r!r}")
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                out += violations(v, props[k], root, f"{path}.{k}")
            else:
                out += violations(v, extra, root, f"{path}.{k}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            out.append(f"{path}: {len(value)} items is outside the bounds")
        prefix = schema.get("prefixItems", [])
        for i, v in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items", True)
            out += violations(v, sub, root, f"{path}[{i}]")
    return out

"""response_format → GBNF grammar, through one list of supported JSON Schema features.

Every schema is checked against that list *before* a grammar is built (``schema_problems``): an
unsupported keyword, an impossible or over-limit size, or a reference that cannot be resolved is a
client error naming the keyword and where it is in the schema, never a grammar that llama.cpp cannot
parse, cannot satisfy, or recurses on until the process dies. The tool-calling code reuses the same
check and the same converter for function parameters.

Why our own converter rather than llama-cpp-python's ``json_schema_to_gbnf`` (0.3.36):
- its string rule ``[^"\\\\]`` lets raw newlines and other control characters into JSON strings, which
  ``json.loads`` rejects; here strings follow JSON's rules (escapes only), as llama.cpp's own C++
  converter writes them;
- its literals do not escape backslashes, so ``{"const": "\\u0000"}`` became a grammar that demands a
  NUL character no token can produce, and llama.cpp aborted the process while sampling;
- it spells ``maxLength: 1000000`` as a million nested groups, and llama.cpp's grammar parser
  overflowed the stack on it.
Here repetitions use GBNF's ``{m,n}`` (which llama.cpp bounds itself) under our own, lower limits, and
every literal is JSON text with control characters and lone surrogates escaped, so each character a
grammar asks for can be written by the tokenizer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# -- limits (each one keeps grammar construction and llama.cpp's grammar engine small and bounded) --

MAX_STRING_LENGTH = 1000  # minLength / maxLength
MAX_ARRAY_ITEMS = 100  # minItems / maxItems, and the length of prefixItems
MAX_PROPERTIES = 100  # properties of one object
MAX_ENUM_VALUES = 256  # values of one enum
MAX_ALTERNATIVES = 64  # anyOf / oneOf branches, and types in a type list
MAX_LITERAL_CHARS = 2000  # the JSON text of one const or enum value
MAX_PROPERTY_NAME = 256  # characters of one property name
MAX_DEPTH = 24  # subschemas nested inside each other
MAX_SUBSCHEMAS = 1000  # subschemas in the whole schema, $defs included

TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
STRING_FORMATS = ("date", "time", "date-time", "uuid")

# Keywords that describe and never constrain: accepted and ignored.
ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly"}
)
# Keywords the converter enforces.
SUPPORTED = (
    "type",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "$ref",
    "$defs",
    "definitions",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
)

_OBJECT_KEYS = ("properties", "required", "additionalProperties")
_ARRAY_KEYS = ("items", "prefixItems", "minItems", "maxItems")
_STRING_KEYS = ("minLength", "maxLength", "format")
_BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
MAX_BOUND = 10**15  # integer bounds beyond this many are refused (the grammar writes them digit by digit)


class SchemaError(ValueError):
    pass


@dataclass(frozen=True)
class SchemaProblem:
    """One reason a schema cannot be turned into a grammar. ``path`` is a JSON Pointer into the
    schema ("" for its root)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"at '{self.path or '/'}': {self.message}"


def _ptr(path: str, key: str | int) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def json_text(value: Any) -> str:
    """``value`` as compact JSON text whose every character a grammar can require: control characters
    are escaped by ``json.dumps``; lone surrogates (which cannot be encoded as UTF-8) and DEL too."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return re.sub(r"[\ud800-\udfff\x7f]", lambda m: f"\\u{ord(m.group()):04x}", text)


def _resolve(root: Any, ref: str) -> Any:
    """The subschema a local reference ("#/$defs/Name") points at; KeyError if none."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        raise KeyError(ref)
    node = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(ref)
    return node


def _int_keyword(schema: dict, key: str, limit: int, path: str, out: list[SchemaProblem]) -> int | None:
    v = schema.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        out.append(SchemaProblem(_ptr(path, key), f"'{key}' must be a non-negative integer"))
        return None
    if v > limit:
        out.append(SchemaProblem(_ptr(path, key), f"'{key}' {v} is over this node's limit of {limit}"))
        return None
    return v


def schema_problems(schema: Any) -> list[SchemaProblem]:
    """Everything in ``schema`` that this node cannot enforce with a grammar: unsupported keywords,
    sizes over the limits above, contradictions (minLength > maxLength, an empty enum), references
    that do not resolve, and recursion that consumes no input. An empty list means
    ``schema_to_gbnf`` will succeed."""
    problems: list[SchemaProblem] = []
    refs: set[str] = set()  # every reference that resolves, checked for left recursion at the end
    count = 0

    def literal(value: Any, path: str) -> None:
        try:
            text = json_text(value)
        except (TypeError, ValueError):
            problems.append(SchemaProblem(path, "the value is not representable as JSON"))
            return
        if len(text) > MAX_LITERAL_CHARS:
            problems.append(
                SchemaProblem(path, f"the value is {len(text)} characters of JSON; the limit is {MAX_LITERAL_CHARS}")
            )

    def walk(node: Any, path: str, depth: int, allow_false: bool = False) -> None:
        nonlocal count
        count += 1
        if count == MAX_SUBSCHEMAS + 1:
            problems.append(SchemaProblem(path, f"the schema has more than {MAX_SUBSCHEMAS} subschemas"))
        if count > MAX_SUBSCHEMAS:
            return
        if depth > MAX_DEPTH:
            problems.append(SchemaProblem(path, f"subschemas are nested more than {MAX_DEPTH} deep"))
            return
        if node is True:
            return
        if node is False:
            if not allow_false:
                problems.append(SchemaProblem(path, "the schema 'false' accepts no value"))
            return
        if not isinstance(node, dict):
            problems.append(SchemaProblem(path, "a schema must be an object or a boolean"))
            return
        bounds = [k for k in _BOUND_KEYS if k in node]
        if bounds:
            if node.get("type") != "integer":
                problems.append(
                    SchemaProblem(_ptr(path, bounds[0]), f"'{bounds[0]}' is supported on integers only (type: integer)")
                )
            else:
                bad = [
                    k
                    for k in bounds
                    if isinstance(node[k], bool)
                    or not isinstance(node[k], (int, float))
                    or node[k] != node[k]
                    or abs(node[k]) > MAX_BOUND
                ]
                for k in bad:
                    problems.append(SchemaProblem(_ptr(path, k), f"'{k}' must be a number within ±{MAX_BOUND}"))
                if not bad:
                    lo, hi = integer_bounds(node)
                    if lo is not None and hi is not None and lo > hi:
                        problems.append(SchemaProblem(path, "no integer lies within these bounds"))
        for key in node:
            if key not in ANNOTATIONS and key not in SUPPORTED:
                problems.append(
                    SchemaProblem(
                        _ptr(path, key), f"the keyword '{key}' is not supported (supported: {', '.join(SUPPORTED)})"
                    )
                )
        for defs in ("$defs", "definitions"):
            if defs in node:
                if not isinstance(node[defs], dict):
                    problems.append(SchemaProblem(_ptr(path, defs), f"'{defs}' must be an object of schemas"))
                else:
                    for name, sub in node[defs].items():
                        walk(sub, _ptr(_ptr(path, defs), name), depth + 1)
        if "$ref" in node:
            ref = node["$ref"]
            others = [k for k in node if k not in ANNOTATIONS and k not in ("$ref", "$defs", "definitions")]
            if others:
                problems.append(SchemaProblem(path, f"keywords beside '$ref' are not supported: {', '.join(others)}"))
            if not isinstance(ref, str):
                problems.append(SchemaProblem(_ptr(path, "$ref"), "'$ref' must be a string"))
                return
            try:
                _resolve(schema, ref)
            except KeyError:
                problems.append(
                    SchemaProblem(
                        _ptr(path, "$ref"),
                        f"'$ref' {ref!r} does not resolve; only local references such as '#/$defs/Name' are supported",
                    )
                )
                return
            refs.add(ref)
            return
        if "const" in node:
            literal(node["const"], _ptr(path, "const"))
        if "enum" in node:
            values = node["enum"]
            p = _ptr(path, "enum")
            if not isinstance(values, list) or not values:
                problems.append(SchemaProblem(p, "'enum' must be a non-empty array"))
            elif len(values) > MAX_ENUM_VALUES:
                problems.append(SchemaProblem(p, f"'enum' has {len(values)} values; the limit is {MAX_ENUM_VALUES}"))
            else:
                for i, v in enumerate(values):
                    literal(v, _ptr(p, i))
        for key in ("anyOf", "oneOf"):
            if key in node:
                others = [k for k in node if k not in ANNOTATIONS and k not in (key, "$defs", "definitions")]
                if others:
                    problems.append(
                        SchemaProblem(path, f"keywords beside '{key}' are not supported: {', '.join(others)}")
                    )
                alts = node[key]
                p = _ptr(path, key)
                if not isinstance(alts, list) or not alts:
                    problems.append(SchemaProblem(p, f"'{key}' must be a non-empty array of schemas"))
                elif len(alts) > MAX_ALTERNATIVES:
                    problems.append(
                        SchemaProblem(p, f"'{key}' has {len(alts)} schemas; the limit is {MAX_ALTERNATIVES}")
                    )
                else:
                    for i, sub in enumerate(alts):
                        walk(sub, _ptr(p, i), depth + 1)
        if "type" in node:
            t = node["type"]
            types = t if isinstance(t, list) else [t]
            if (
                not types
                or len(types) > MAX_ALTERNATIVES
                or any(x not in TYPES for x in types)
                or len(set(map(str, types))) != len(types)
            ):
                problems.append(
                    SchemaProblem(
                        _ptr(path, "type"),
                        f"'type' must be one of {', '.join(TYPES)} or a non-empty array of distinct ones",
                    )
                )
        # objects
        props = node.get("properties")
        if props is not None:
            p = _ptr(path, "properties")
            if not isinstance(props, dict):
                problems.append(SchemaProblem(p, "'properties' must be an object of schemas"))
                props = None
            elif len(props) > MAX_PROPERTIES:
                problems.append(SchemaProblem(p, f"{len(props)} properties; the limit is {MAX_PROPERTIES}"))
            else:
                for name, sub in props.items():
                    if len(name) > MAX_PROPERTY_NAME:
                        problems.append(
                            SchemaProblem(
                                _ptr(p, name[:40] + "..."),
                                f"a property name of {len(name)} characters; the limit is {MAX_PROPERTY_NAME}",
                            )
                        )
                    walk(sub, _ptr(p, name), depth + 1)
        if "required" in node:
            req = node["required"]
            p = _ptr(path, "required")
            if not isinstance(req, list) or not all(isinstance(r, str) for r in req) or len(set(req)) != len(req):
                problems.append(SchemaProblem(p, "'required' must be an array of distinct property names"))
            else:
                for r in req:
                    if r not in (props or {}):
                        problems.append(SchemaProblem(p, f"the required property {r!r} is not defined in 'properties'"))
        if "additionalProperties" in node:
            walk(node["additionalProperties"], _ptr(path, "additionalProperties"), depth + 1, allow_false=True)
        # arrays
        lo = _int_keyword(node, "minItems", MAX_ARRAY_ITEMS, path, problems)
        hi = _int_keyword(node, "maxItems", MAX_ARRAY_ITEMS, path, problems)
        if lo is not None and hi is not None and lo > hi:
            problems.append(SchemaProblem(_ptr(path, "minItems"), f"'minItems' {lo} is greater than 'maxItems' {hi}"))
        if "prefixItems" in node:
            pre = node["prefixItems"]
            p = _ptr(path, "prefixItems")
            if not isinstance(pre, list) or not pre:
                problems.append(SchemaProblem(p, "'prefixItems' must be a non-empty array of schemas"))
            elif len(pre) > MAX_ARRAY_ITEMS:
                problems.append(
                    SchemaProblem(p, f"'prefixItems' has {len(pre)} schemas; the limit is {MAX_ARRAY_ITEMS}")
                )
            else:
                for i, sub in enumerate(pre):
                    walk(sub, _ptr(p, i), depth + 1)
            if node.get("items", False) is not False:
                problems.append(
                    SchemaProblem(
                        _ptr(path, "items"), "'items' beside 'prefixItems' must be false (a fixed-length tuple)"
                    )
                )
            if lo is not None or hi is not None:
                problems.append(SchemaProblem(path, "'minItems'/'maxItems' beside 'prefixItems' are not supported"))
        elif "items" in node:
            items = node["items"]
            if isinstance(items, list):
                problems.append(
                    SchemaProblem(
                        _ptr(path, "items"), "array-form 'items' is not supported; use 'prefixItems' for a tuple"
                    )
                )
            else:
                walk(items, _ptr(path, "items"), depth + 1, allow_false=True)
                if items is False and lo:
                    problems.append(
                        SchemaProblem(_ptr(path, "items"), f"'items' false allows no item, but 'minItems' is {lo}")
                    )
        # strings
        lo = _int_keyword(node, "minLength", MAX_STRING_LENGTH, path, problems)
        hi = _int_keyword(node, "maxLength", MAX_STRING_LENGTH, path, problems)
        if lo is not None and hi is not None and lo > hi:
            problems.append(
                SchemaProblem(_ptr(path, "minLength"), f"'minLength' {lo} is greater than 'maxLength' {hi}")
            )
        if "format" in node:
            fmt = node["format"]
            if fmt not in STRING_FORMATS:
                problems.append(
                    SchemaProblem(
                        _ptr(path, "format"),
                        f"the format {fmt!r} is not supported (supported: {', '.join(STRING_FORMATS)})",
                    )
                )
            elif "minLength" in node or "maxLength" in node:
                problems.append(SchemaProblem(path, "'minLength'/'maxLength' beside 'format' are not supported"))

    walk(schema, "", 0)
    for ref in sorted(_left_recursive(schema, refs)):
        problems.append(
            SchemaProblem("", f"'$ref' {ref!r} refers back to itself without an object or array in between")
        )
    return problems


def _head_refs(node: Any) -> list[str]:
    """References a schema reaches before reading any character: through '$ref', 'anyOf', 'oneOf'."""
    if not isinstance(node, dict):
        return []
    if isinstance(node.get("$ref"), str):
        return [node["$ref"]]
    out: list[str] = []
    for key in ("anyOf", "oneOf"):
        alts = node.get(key)
        if isinstance(alts, list):
            for a in alts:
                out += _head_refs(a)
    return out


def _left_recursive(root: Any, refs: set[str]) -> set[str]:
    """The references that reach themselves before reading a character: a rule that calls itself
    first (left recursion), which llama.cpp refuses and which could never end."""
    edges = {r: [h for h in _head_refs(_resolve(root, r)) if h in refs] for r in refs}
    looping = set()
    for start in refs:
        todo, seen = list(edges[start]), set()
        while todo:
            r = todo.pop()
            if r == start:
                looping.add(start)
                break
            if r not in seen:
                seen.add(r)
                todo.extend(edges[r])
    return looping


def check_schema(schema: Any, where: str) -> None:
    """Raise SchemaError naming every problem (the first few) of ``schema``, found at ``where``."""
    problems = schema_problems(schema)
    if problems:
        shown = "; ".join(str(p) for p in problems[:5])
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise SchemaError(f"{where} cannot be enforced: {shown}{more}")


# -- the converter -------------------------------------------------------------------------------

# GBNF for JSON's own grammar (RFC 8259), as llama.cpp's converter writes it; whitespace is bounded.
_PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "space": (r'| " " | "\n" [ \t]{0,20}', ()),
    "char": (r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})', ()),
    "string": (r'"\"" char* "\"" space', ("char", "space")),
    "integral-part": (r"[0] | [1-9] [0-9]{0,15}", ()),
    "decimal-part": (r"[0-9]{1,16}", ()),
    "number": (
        r'"-"? integral-part ("." decimal-part)? ([eE] [-+]? integral-part)? space',
        ("integral-part", "decimal-part", "space"),
    ),
    "integer": (r'"-"? integral-part space', ("integral-part", "space")),
    "boolean": (r'("true" | "false") space', ("space",)),
    "null": (r'"null" space', ("space",)),
    "value": (
        r"object | array | string | number | boolean | null",
        ("object", "array", "string", "number", "boolean", "null"),
    ),
    "object": (
        r'"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
        ("string", "value", "space"),
    ),
    "array": (r'"[" space ( value ("," space value)* )? "]" space', ("value", "space")),
    "date": (r'[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )', ()),
    "time": (
        r'([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? '
        r'( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )',
        (),
    ),
    "date-time": (r'date "T" time', ("date", "time")),
    "date-string": (r'"\"" date "\"" space', ("date", "space")),
    "time-string": (r'"\"" time "\"" space', ("time", "space")),
    "date-time-string": (r'"\"" date-time "\"" space', ("date-time", "space")),
    "uuid-string": (
        r'"\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
        r'[0-9a-fA-F]{12} "\"" space',
        ("space",),
    ),
}


def integer_bounds(schema: dict) -> tuple[int | None, int | None]:
    """The inclusive integer range a schema's minimum/maximum/exclusive* keywords allow (None: open)."""
    import math

    lo = hi = None
    if "minimum" in schema:
        lo = math.ceil(schema["minimum"])
    if "exclusiveMinimum" in schema:
        v = math.floor(schema["exclusiveMinimum"]) + 1
        lo = v if lo is None else max(lo, v)
    if "maximum" in schema:
        hi = math.floor(schema["maximum"])
    if "exclusiveMaximum" in schema:
        v = math.ceil(schema["exclusiveMaximum"]) - 1
        hi = v if hi is None else min(hi, v)
    return lo, hi


def _digit_ranges(lo: int, hi: int) -> list[tuple[str, str]]:
    """[lo, hi] (0 <= lo <= hi) as ranges whose ends have the same number of digits and differ only in a
    run of trailing positions, each ending in 0..9 where they differ after the first: the classic split
    behind numeric-range regular expressions."""
    stops = {hi}
    k = 1
    while True:
        s = str(lo)
        stop = int(s[:-k] + "9" * k) if k <= len(s) else int("9" * k)
        if not lo <= stop < hi:
            break
        stops.add(stop)
        k += 1
    k = 1
    while True:
        stop = (hi + 1) - (hi + 1) % 10**k - 1
        if not lo < stop <= hi:
            break
        stops.add(stop)
        k += 1
    out, start = [], lo
    for stop in sorted(stops):
        out.append((str(start), str(stop)))
        start = stop + 1
    return out


def _range_pattern(start: str, stop: str) -> str:
    parts: list[str] = []
    free = 0
    for a, b in zip(start, stop, strict=True):
        if a == b:
            parts.append(f'"{a}"')
        elif a == "0" and b == "9":
            free += 1
        else:
            parts.append(f"[{a}-{b}]")
    if free:
        parts.append(f"[0-9]{{{free}}}")
    return " ".join(parts)


def _non_negative(lo: int, hi: int | None) -> list[str]:
    """GBNF alternatives for the JSON integers in [lo, hi] (lo >= 0; hi None: no upper bound)."""
    if hi is not None:
        return [_range_pattern(a, b) for a, b in _digit_ranges(lo, hi)]
    width = len(str(lo))
    alts = [_range_pattern(a, b) for a, b in _digit_ranges(lo, 10**width - 1)]
    return alts + [f"[1-9] [0-9]{{{width},15}}"]  # every number with more digits than lo


def integer_range_gbnf(lo: int | None, hi: int | None) -> str:
    """A GBNF alternation matching exactly the JSON integers in [lo, hi] (None: open on that side)."""
    alts: list[str] = []
    if lo is None or lo < 0:  # negatives: "-" and the absolute values in [max(1, -hi), -lo]
        neg_hi = None if lo is None else -lo
        neg_lo = 1 if hi is None or hi >= 0 else -hi
        if neg_hi is None or neg_lo <= neg_hi:
            alts += [f'"-" {p}' for p in _non_negative(neg_lo, neg_hi)]
    if hi is None or hi >= 0:
        alts += _non_negative(max(lo or 0, 0), hi)
    return " | ".join(f"({a})" for a in alts)


_GBNF_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def gbnf_literal(text: str) -> str:
    """A GBNF string literal matching exactly ``text`` (JSON text: no raw control characters)."""
    return '"' + "".join(_GBNF_ESCAPES.get(c, c) for c in text) + '"'


class GrammarBuilder:
    """Builds one GBNF grammar from JSON Schemas (checked with ``schema_problems`` first). Several
    schemas can share a builder (e.g. the arguments of several tools) and be combined with rules of
    the caller's own."""

    def __init__(self) -> None:
        self._rules: dict[str, str] = {}
        self._refs: dict[tuple[int, str], str] = {}

    def primitive(self, name: str) -> str:
        if name not in self._rules:
            body, deps = _PRIMITIVES[name]
            self._rules[name] = body
            for d in deps:
                self.primitive(d)
        return name

    def add_rule(self, name: str, body: str) -> str:
        """Add ``name ::= body`` under a free name derived from ``name``; return the name used."""
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", name).strip("-") or "r"
        key, i = base, 0
        while key in self._rules and self._rules[key] != body:
            i += 1
            key = f"{base}-{i}"
        self._rules[key] = body
        return key

    def schema_rule(self, schema: Any, name: str, root: Any = None) -> str:
        """A rule matching the JSON values ``schema`` accepts; ``root`` is the document its local
        references resolve against (``schema`` itself by default)."""
        return self._visit(schema, name, schema if root is None else root)

    def render(self, root_body: str) -> str:
        return "\n".join([f"root ::= {root_body}", *(f"{k} ::= {v}" for k, v in self._rules.items())]) + "\n"

    def _visit(self, schema: Any, name: str, root: Any) -> str:
        if (
            schema is True
            or schema == {}
            or (isinstance(schema, dict) and not (set(schema) - ANNOTATIONS - {"$defs", "definitions"}))
        ):
            return self.primitive("value")
        ref = schema.get("$ref")
        if ref is not None:
            key = (id(root), ref)
            if key not in self._refs:
                rule = self.add_rule("ref-" + ref.rsplit("/", 1)[-1], f"(pending {ref})")
                self._refs[key] = rule  # recursive references use the rule while it is being built
                self._rules[rule] = self._visit(_resolve(root, ref), rule, root)
            return self._refs[key]
        if "const" in schema:
            return self.add_rule(name, gbnf_literal(json_text(schema["const"])) + " " + self.primitive("space"))
        if "enum" in schema:
            values = " | ".join(gbnf_literal(json_text(v)) for v in schema["enum"])
            return self.add_rule(name, f"({values}) {self.primitive('space')}")
        for combinator in ("anyOf", "oneOf"):
            if combinator in schema:
                branches = [self._visit(s, f"{name}-{i}", root) for i, s in enumerate(schema[combinator])]
                return self.add_rule(name, " | ".join(branches))
        t = schema.get("type")
        if isinstance(t, list):
            typed = [self._visit({**schema, "type": x}, f"{name}-{x}", root) for x in t]
            return self.add_rule(name, " | ".join(typed))
        if t is None:
            t = (
                "object"
                if any(k in schema for k in _OBJECT_KEYS)
                else "array"
                if any(k in schema for k in _ARRAY_KEYS)
                else "string"
                if any(k in schema for k in _STRING_KEYS)
                else None
            )
            if t is None:
                return self.primitive("value")
        if t == "object":
            return self._object(schema, name, root)
        if t == "array":
            return self._array(schema, name, root)
        if t == "integer" and any(k in schema for k in _BOUND_KEYS):
            lo, hi = integer_bounds(schema)
            return self.add_rule(name, f"({integer_range_gbnf(lo, hi)}) {self.primitive('space')}")
        if t == "string":
            fmt = schema.get("format")
            if fmt is not None:
                return self.primitive(f"{fmt}-string")
            lo, hi = schema.get("minLength", 0), schema.get("maxLength")
            if lo == 0 and hi is None:
                return self.primitive("string")
            rep = f"{{{lo},}}" if hi is None else f"{{{lo},{hi}}}"
            return self.add_rule(name, rf'"\"" {self.primitive("char")}{rep} "\"" {self.primitive("space")}')
        return self.primitive(t)

    def _object(self, schema: dict, name: str, root: Any) -> str:
        props: dict = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        if "properties" not in schema and extra in (None, True):
            return self.primitive("object")
        space = self.primitive("space")
        required = set(schema.get("required") or ())
        kvs: dict[str, str] = {}
        for prop, sub in props.items():
            value = self._visit(sub, f"{name}-{prop}", root)
            kvs[prop] = self.add_rule(
                f"{name}-{prop}-kv", f'{gbnf_literal(json_text(prop))} {space} ":" {space} {value}'
            )
        req = [kvs[p] for p in props if p in required]
        opt = [kvs[p] for p in props if p not in required]
        if extra is True or isinstance(extra, dict):
            # Other keys, with values of the 'additionalProperties' schema. Absent
            # 'additionalProperties' adds none: the output still matches the schema, and stays what
            # the caller described.
            value = self._visit({} if extra is True else extra, f"{name}-extra-value", root)
            key = self.add_rule(f"{name}-extra-key", self._other_key(list(props), space))
            kv = self.add_rule(f"{name}-extra-kv", f'{key} ":" {space} {value}')
            opt.append(self.add_rule(f"{name}-extra-kvs", f'{kv} ("," {space} {kv})*'))
        body = f'"{{" {space} ' + f' "," {space} '.join(req)
        if opt:
            # Any subset of the optional members, in order: opt[i] then rest(i+1), where rest(j) is
            # ("," opt[j])? rest(j+1). Named rules keep this linear in the number of members.
            rest = ""
            rests: list[str] = [""] * len(opt)
            for j in range(len(opt) - 1, 0, -1):
                rest = self.add_rule(f"{name}-rest-{j}", f'("," {space} {opt[j]})? {rest}'.strip())
                rests[j - 1] = rest
            chain = " | ".join(f"{o} {rests[i]}".strip() for i, o in enumerate(opt))
            body += f' ("," {space} ({chain}))?' if req else f" ({chain})?"
        body += f' "}}" {space}'
        return self.add_rule(name or "object-of-schema", body)

    @staticmethod
    def _other_key(names: list[str], space: str) -> str:
        """A JSON string that is none of ``names``, so an extra member never repeats a named one (a
        duplicate key would replace the named member's value when parsed). Extra keys are written
        without escapes, so no escaped spelling of a name can slip through; names that need escapes
        can never be spelled this way and need no exclusion."""
        plain = r'[^"\\\x7F\x00-\x1F]'
        trie: dict = {}
        for n in names:
            if any(c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F for c in n):
                continue
            node = trie
            for c in n:
                node = node.setdefault(c, {})
            node[""] = {}  # end of a name

        def cls(c: str) -> str:
            return f"\\U{ord(c):08X}"

        def visit(node: dict) -> str:
            alts = [f"[{cls(c)}] {visit(child)}" for c, child in node.items() if c]
            rejects = "".join(cls(c) for c in node if c)
            alts.append(f'[^"\\\\\\x7F\\x00-\\x1F{rejects}] {plain}*')
            body = "(" + " | ".join(alts) + ")"
            return body if "" in node else body + "?"  # ending here would spell a name

        return rf'"\"" {visit(trie)} "\"" {space}'

    def _array(self, schema: dict, name: str, root: Any) -> str:
        space = self.primitive("space")
        if "prefixItems" in schema:
            items = [self._visit(s, f"{name}-{i}", root) for i, s in enumerate(schema["prefixItems"])]
            return self.add_rule(name, f'"[" {space} ' + f' "," {space} '.join(items) + f' "]" {space}')
        items_schema = schema.get("items", True)
        lo, hi = schema.get("minItems", 0), schema.get("maxItems")
        if items_schema is False or hi == 0:
            return self.add_rule(name, f'"[" {space} "]" {space}')
        item = self._visit(items_schema, f"{name}-item", root)
        more = f'("," {space} {item})'
        if hi is None:
            tail = f"{more}{{{max(lo - 1, 0)},}}"
        elif hi == 1:
            tail = ""
        else:
            tail = f"{more}{{{max(lo - 1, 0)},{hi - 1}}}"
        seq = f"{item} {tail}".strip()
        inner = seq if lo > 0 else f"({seq})?"
        return self.add_rule(name, f'"[" {space} {inner} "]" {space}')


def schema_to_gbnf(schema: Any, where: str = "the schema") -> str:
    """A GBNF grammar (rule "root") whose every output is JSON text valid against ``schema``.
    Raises SchemaError naming what is not supported, with its path."""
    check_schema(schema, where)
    b = GrammarBuilder()
    return b.render(b.schema_rule(schema, "root-value"))


JSON_OBJECT_GBNF = schema_to_gbnf({"type": "object"})


def grammar_for_response_format(response_format: dict | None) -> str | None:
    """None for plain text; a GBNF grammar for ``json_object`` and ``json_schema``."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return JSON_OBJECT_GBNF
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise SchemaError("response_format.json_schema.schema must be a JSON Schema object")
        return schema_to_gbnf(spec["schema"], "response_format.json_schema.schema")
    raise SchemaError(f"unknown response_format type {kind!r}; use 'text', 'json_object' or 'json_schema'")

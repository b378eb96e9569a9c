"""A request's tools: ``tools``, ``tool_choice`` and ``parallel_tool_calls`` checked into a ToolsSpec, and the
tool-calling parts of a conversation (assistant ``tool_calls``, ``tool`` results) checked message by message.

Pure functions over the request body; every bad input is a 400 naming the field, refused before any work
(rendering, tokenizing, building a grammar). The same spec serves /v1/chat/completions and /v1/responses:
each API reads its own field names into these types.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from ..engine.grammar import schema_problems
from ..errors import invalid, type_name

MAX_TOOLS = 128  # OpenAI's own limit on 'tools'
MAX_DESCRIPTION_CHARS = 10_000  # characters of one tool's description
MAX_SCHEMA_CHARS = 100_000  # characters of one tool's parameters schema, as compact JSON
MAX_TOOLS_CHARS = 400_000  # characters of all tool definitions together
MAX_TOOL_CALLS = 128  # tool calls in one assistant message of the history
NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for function names

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}

ChoiceMode = Literal["auto", "none", "required", "function"]


@dataclass(frozen=True)
class FunctionTool:
    """One function the model may call. ``parameters`` is the JSON Schema of its arguments object;
    ``enforceable``: whether the grammar converter supports every keyword of it (a strict tool must be;
    a non-strict one that is not gets arguments constrained to any JSON object)."""

    name: str
    description: str | None
    parameters: dict[str, Any]
    strict: bool
    enforceable: bool

    def openai(self) -> dict[str, Any]:
        """The tool as OpenAI's chat API spells it: what chat templates expect in their ``tools``."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            fn["description"] = self.description
        fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolChoice:
    mode: ChoiceMode
    name: str | None = None  # the forced function, when mode == "function"


@dataclass(frozen=True)
class ToolsSpec:
    tools: tuple[FunctionTool, ...]
    choice: ToolChoice
    parallel: bool

    @property
    def active(self) -> bool:
        """Whether the model is offered the tools at all (``tool_choice: none`` turns them off)."""
        return bool(self.tools) and self.choice.mode != "none"

    @property
    def callable_tools(self) -> tuple[FunctionTool, ...]:
        """The tools the model may call under this choice: one when a function is forced."""
        if self.choice.mode == "function":
            return tuple(t for t in self.tools if t.name == self.choice.name)
        return self.tools if self.active else ()

    def tool(self, name: str) -> FunctionTool | None:
        return next((t for t in self.tools if t.name == name), None)

    @property
    def finish_reason(self) -> str:
        """OpenAI answers "stop" when a named function was forced, "tool_calls" otherwise."""
        return "stop" if self.choice.mode == "function" else "tool_calls"


def _tool(raw: Any, i: int, flat: bool) -> FunctionTool:
    """One tool; ``flat``: the Responses API's shape (the function's fields beside ``type``, strict by
    default) instead of chat's ``{"type": "function", "function": {...}}``."""
    p = f"tools[{i}]"
    if not isinstance(raw, dict):
        raise invalid(f'\'{p}\' must be an object such as {{"type": "function", "function": {{...}}}}.', p)
    kind = raw.get("type")
    if kind != "function":
        raise invalid(
            f"'{p}.type' is {kind!r}; this node supports function tools only (type 'function').",
            f"{p}.type",
            "unsupported_tool_type",
        )
    fn = raw if flat else raw.get("function")
    if not isinstance(fn, dict):
        raise invalid(f"'{p}.function' must be an object with a 'name'.", f"{p}.function", "invalid_type")
    fp = p if flat else f"{p}.function"
    name = fn.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise invalid(
            f"'{fp}.name' must be 1 to 64 letters, digits, underscores or dashes; got {name!r}.",
            f"{fp}.name",
        )
    desc = fn.get("description")
    if desc is not None and not isinstance(desc, str):
        raise invalid(f"'{fp}.description' must be a string.", f"{fp}.description", "invalid_type")
    if desc is not None and len(desc) > MAX_DESCRIPTION_CHARS:
        raise invalid(
            f"'{fp}.description' is {len(desc)} characters; this node accepts at most {MAX_DESCRIPTION_CHARS}.",
            f"{fp}.description",
            "string_above_max_length",
        )
    strict = fn.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise invalid(f"'{fp}.strict' must be a boolean.", f"{fp}.strict", "invalid_type")
    params = fn.get("parameters")
    pp = f"{fp}.parameters"
    if params is None:
        params = EMPTY_PARAMETERS
    if not isinstance(params, dict):
        raise invalid(f"'{pp}' must be a JSON Schema object, not {type_name(params)}.", pp, "invalid_type")
    if params.get("type", "object") != "object":
        raise invalid(f"'{pp}' must describe an object (type 'object'); got type {params.get('type')!r}.", pp)
    try:
        size = len(json.dumps(params, separators=(",", ":")))
    except (TypeError, ValueError):
        raise invalid(f"'{pp}' is not representable as JSON.", pp) from None
    if size > MAX_SCHEMA_CHARS:
        raise invalid(
            f"'{pp}' is {size} characters of JSON; this node accepts at most {MAX_SCHEMA_CHARS} per tool.",
            pp,
            "string_above_max_length",
        )
    strict = strict if strict is not None else flat
    problems = schema_problems(params)
    if problems and strict:
        shown = "; ".join(str(x) for x in problems[:5])
        raise invalid(
            f"'{pp}' cannot be enforced for a strict tool: {shown}. Remove those keywords or set 'strict' to false.",
            pp,
            "unsupported_schema",
        )
    return FunctionTool(name, desc, params, strict, not problems)


def _choice(raw: Any, names: list[str]) -> ToolChoice:
    if raw is None:
        return ToolChoice("auto" if names else "none")
    if isinstance(raw, str):
        if raw not in ("auto", "none", "required"):
            raise invalid(
                f"'tool_choice' must be 'auto', 'none', 'required' or an object naming a function; got {raw!r}.",
                "tool_choice",
            )
        if raw != "none" and not names:
            raise invalid(f"'tool_choice' is {raw!r} but the request has no 'tools'.", "tool_choice")
        return ToolChoice(raw)  # type: ignore[arg-type]  # checked just above
    if isinstance(raw, dict):
        fn = raw.get("function")
        name = fn.get("name") if isinstance(fn, dict) else raw.get("name")  # chat's shape, or Responses'
        if raw.get("type") != "function" or not isinstance(name, str):
            raise invalid(
                '\'tool_choice\' as an object must be {"type": "function", "function": {"name": "..."}}.',
                "tool_choice",
                "invalid_type",
            )
        if name not in names:
            listed = ", ".join(names) if names else "none"
            raise invalid(
                f"'tool_choice' names the function {name!r}, which is not in 'tools' (tools: {listed}).",
                "tool_choice",
            )
        return ToolChoice("function", name)
    raise invalid(f"'tool_choice' must be a string or an object, not {type_name(raw)}.", "tool_choice", "invalid_type")


def parse_tools(body: dict[str, Any], responses: bool = False) -> ToolsSpec | None:
    """The request's tools, or None when it sends none. Bounded before any schema is walked: the number
    of tools, then each tool's size. ``responses``: the body is a Responses API request (flat function
    tools, strict unless said otherwise; ``tool_choice`` as ``{"type": "function", "name": ...}``)."""
    raw = body.get("tools")
    if body.get("functions") or body.get("function_call"):
        key = "functions" if body.get("functions") else "function_call"
        raise invalid(
            f"'{key}' is OpenAI's deprecated form of function calling; send 'tools' and 'tool_choice' instead.",
            key,
            "unsupported_parameter",
        )
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid("'parallel_tool_calls' must be a boolean.", "parallel_tool_calls", "invalid_type")
    if raw is None:
        if body.get("tool_choice") not in (None, "none"):
            raise invalid("'tool_choice' is set but the request has no 'tools'.", "tool_choice")
        return None
    if not isinstance(raw, list):
        raise invalid(f"'tools' must be an array, not {type_name(raw)}.", "tools", "invalid_type")
    if len(raw) > MAX_TOOLS:
        raise invalid(
            f"'tools' holds {len(raw)} tools; this node accepts at most {MAX_TOOLS} per request.",
            "tools",
            "array_above_max_length",
        )
    try:
        total = len(json.dumps(raw, separators=(",", ":")))
    except (TypeError, ValueError):
        raise invalid("'tools' is not representable as JSON.", "tools") from None
    if total > MAX_TOOLS_CHARS:
        raise invalid(
            f"'tools' is {total} characters of JSON; this node accepts at most {MAX_TOOLS_CHARS}.",
            "tools",
            "string_above_max_length",
        )
    tools = [_tool(t, i, responses) for i, t in enumerate(raw)]
    names = [t.name for t in tools]
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise invalid(f"'tools' defines the function {dup!r} twice; names must be unique.", "tools")
    choice = _choice(body.get("tool_choice"), names)
    return ToolsSpec(tuple(tools), choice, True if parallel is None else parallel)


# -- the conversation's tool parts -----------------------------------------------------------------


def parse_assistant_tool_calls(raw: Any, p: str) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls`` (as the client echoes them back) → a normalized list of
    {"id", "type": "function", "function": {"name", "arguments"}} with ``arguments`` a JSON text."""
    param = f"{p}.tool_calls"
    if not isinstance(raw, list):
        raise invalid(f"'{param}' must be an array of tool calls.", param, "invalid_type")
    if len(raw) > MAX_TOOL_CALLS:
        raise invalid(
            f"'{param}' holds {len(raw)} calls; this node accepts at most {MAX_TOOL_CALLS}.",
            param,
            "array_above_max_length",
        )
    out = []
    for j, c in enumerate(raw):
        cp = f"{param}[{j}]"
        if not isinstance(c, dict):
            raise invalid(f"'{cp}' must be an object.", cp, "invalid_type")
        cid = c.get("id")
        if not isinstance(cid, str) or not cid:
            raise invalid(f"'{cp}.id' must be a non-empty string.", f"{cp}.id", "invalid_type")
        if c.get("type", "function") != "function":
            raise invalid(f"'{cp}.type' must be 'function'.", f"{cp}.type")
        fn = c.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid(f"'{cp}.function' must be an object with a 'name'.", f"{cp}.function", "invalid_type")
        args = fn.get("arguments", "{}")
        if not isinstance(args, str):
            raise invalid(
                f"'{cp}.function.arguments' must be a string of JSON.", f"{cp}.function.arguments", "invalid_type"
            )
        out.append({"id": cid, "type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def parse_tool_call_id(m: dict[str, Any], p: str) -> str:
    """A ``tool`` message's ``tool_call_id``: which call its content answers."""
    tid = m.get("tool_call_id")
    if not isinstance(tid, str) or not tid:
        raise invalid(
            f"'{p}.tool_call_id' is required on a 'tool' message: the id of the call it answers.",
            f"{p}.tool_call_id",
            "missing_required_parameter",
        )
    return tid

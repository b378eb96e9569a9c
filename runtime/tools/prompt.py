"""The conversation as the chat template renders it when tools are in play.

Native formats: the template itself offers the tools (``tools=``) and writes past calls and results; the
history's arguments are handed over as objects (what the published templates expect: Llama's and
Qwen3-Coder's iterate them), and for Mistral templates call ids become the 9 characters they demand.

Generic protocol (templates without tools): our own instructions in the system message (or, for templates
that refuse a system role, at the start of the first user message), past calls written as the JSON
envelope the model is asked to write, and results as user turns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

from .formats import ToolFormat
from .spec import ToolsSpec

T = TypeVar("T")


def generic_instructions(spec: ToolsSpec) -> str:
    """The system prompt that teaches a model without a native format the generic JSON protocol; its
    answer is then held to the protocol by a grammar, so these words only need to make the intent clear."""
    tools = spec.callable_tools
    lines = [
        json.dumps({"name": t.name, "description": t.description or "", "parameters": t.parameters}, ensure_ascii=False)
        for t in tools
    ]
    options = ['- to call a function: {"tool_call": {"name": "<function name>", "arguments": {<its arguments>}}}']
    if spec.parallel and spec.choice.mode != "function":
        options.append(
            '- to call several functions at once: {"tool_calls": [{"name": "...", "arguments": {...}}, ...]}'
        )
    if spec.choice.mode == "auto":
        options.append('- to answer the user directly: {"response": "<your answer>"}')
    must = {
        "required": "You must call at least one function.\n",
        "function": f"You must call the function {tools[0].name}.\n" if tools else "",
    }.get(spec.choice.mode, "")
    return (
        "You can call functions. The available functions, each with the JSON Schema of its arguments:\n"
        + "\n".join(lines)
        + "\n\n"
        + must
        + "Reply with exactly one JSON object and nothing else:\n"
        + "\n".join(options)
    )


def _mistral_id(call_id: str) -> str:
    """Mistral's templates refuse ids that are not 9 alphanumeric characters; the same id always maps to
    the same 9 characters, so a call and its result stay paired."""
    digest = hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()
    return digest[:9] if not (len(call_id) == 9 and call_id.isalnum()) else call_id


def _as_object(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _native(messages: list[dict[str, Any]], fmt: ToolFormat) -> list[dict[str, Any]]:
    fix_id = _mistral_id if fmt.name == "mistral" else (lambda i: i)
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = [
                {
                    "id": fix_id(c["id"]),
                    "type": "function",
                    "function": {"name": c["function"]["name"], "arguments": _as_object(c["function"]["arguments"])},
                }
                for c in m["tool_calls"]
            ]
            out.append({**m, "tool_calls": calls})
        elif m["role"] == "tool":
            out.append({**m, "tool_call_id": fix_id(m["tool_call_id"])})
        else:
            out.append(m)
    return out


def _generic(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.get("tool_calls"):
            calls = [
                {"name": c["function"]["name"], "arguments": _as_object(c["function"]["arguments"])}
                for c in m["tool_calls"]
            ]
            names.update({c["id"]: c["function"]["name"] for c in m["tool_calls"]})
            envelope = {"tool_call": calls[0]} if len(calls) == 1 else {"tool_calls": calls}
            out.append({"role": "assistant", "content": json.dumps(envelope, ensure_ascii=False)})
        elif m["role"] == "tool":
            name = names.get(m["tool_call_id"], "a function")
            text = f"Result of {name} (call {m['tool_call_id']}):\n{m['content']}"
            if out and out[-1]["role"] == "user":  # several results answer one turn of calls
                out[-1] = {"role": "user", "content": out[-1]["content"] + "\n\n" + text}
            else:
                out.append({"role": "user", "content": text})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def _with_instructions(messages: list[dict[str, Any]], text: str, as_system: bool) -> list[dict[str, Any]]:
    role = "system" if as_system else "user"
    at = next((i for i, m in enumerate(messages) if m["role"] == role), None)
    if at is None:
        if as_system:
            return [{"role": "system", "content": text}, *messages]
        return [{"role": "user", "content": text}, *messages]
    merged = {**messages[at], "content": text + "\n\n" + messages[at]["content"]}
    return [*messages[:at], merged, *messages[at + 1 :]]


def control_text_in_tool_parts(messages: list[dict[str, Any]], specials: list[str]) -> tuple[str, str] | None:
    """(param, special text) of the first call id, function name or arguments in the history that holds the
    text of one of the model's control tokens, or None. Contents are tokenized apart from the template's
    markup (they cannot write control tokens); these parts are written into the markup by native templates,
    so a control token in them is refused instead."""
    for i, m in enumerate(messages):
        parts = [(f"messages[{i}].tool_call_id", m.get("tool_call_id") or "")]
        for j, c in enumerate(m.get("tool_calls") or ()):
            p = f"messages[{i}].tool_calls[{j}]"
            parts += [(f"{p}.id", c["id"]), (f"{p}.function.name", c["function"]["name"])]
            parts.append((f"{p}.function.arguments", c["function"]["arguments"]))
        for param, text in parts:
            hit = next((t for t in specials if t and t in text), None)
            if hit is not None:
                return param, hit
    return None


def render_with_tools(
    render: Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], T],
    messages: list[dict[str, Any]],
    spec: ToolsSpec | None,
    fmt: ToolFormat,
) -> T:
    """Render the conversation with ``render(messages, tools)`` (the caller's template call, which raises
    ValueError when the template refuses the messages), adapted to the tool format."""
    has_tool_parts = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    active = spec is not None and spec.active
    if fmt.native:
        tools = [t.openai() for t in spec.tools] if active and spec is not None else None
        return render(_native(messages, fmt) if has_tool_parts else messages, tools)
    plain = _generic(messages) if has_tool_parts else messages
    if not active or spec is None:
        return render(plain, None)
    text = generic_instructions(spec)
    try:
        return render(_with_instructions(plain, text, as_system=True), None)
    except ValueError:  # e.g. Gemma's templates: "System role not supported"
        return render(_with_instructions(plain, text, as_system=False), None)

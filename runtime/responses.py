"""The stateless Responses API (POST /v1/responses), the request side, as pure translation: a Responses
request becomes the equivalent chat completions request, which runs on the same generation path (here
or on a mesh peer). The answer's events are told as a Response by api/responses_format.py.

Stateless: nothing is stored. An absent ``store`` is treated as false and echoed as ``store: false``;
``store: true``, ``previous_response_id`` and ``conversation`` (which need stored responses) are refused
with a 400 naming the field, as are features this node does not have (built-in and custom tools, images,
files, background mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import APIError, invalid, type_name
from .tools.spec import parse_tools

# Fields a Responses request may carry that this node cannot honour, with why (each a 400 naming it).
_STATEFUL = {
    "previous_response_id": "this node keeps no responses (the API is stateless here): send the whole "
    "conversation in 'input' instead",
    "conversation": "this node keeps no conversations (the API is stateless here): send the whole "
    "conversation in 'input' instead",
    "prompt": "stored prompt templates are not available on this node; send the text in 'instructions' and 'input'",
}


def _unsupported(message: str, param: str) -> APIError:
    return invalid(message, param, "unsupported_parameter")


@dataclass
class ResponsesRequest:
    """A checked Responses request: the chat completions body that runs it, whether to stream, and the
    request fields the Response object echoes back."""

    chat_body: dict
    stream: bool
    echo: dict = field(default_factory=dict)


def _text_of_parts(content: Any, param: str, allowed: tuple[str, ...]) -> str:
    """A message's content: a string, or an array of text parts of the ``allowed`` types."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(
            f"'{param}' must be a string or an array of content parts, not {type_name(content)}.",
            param,
            "invalid_type",
        )
    texts = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid(f"'{p}' must be an object with a 'type'.", p, "invalid_type")
        kind = part["type"]
        if kind not in allowed:
            if kind in ("input_image", "input_file", "input_audio"):
                raise invalid(
                    f"'{p}' has type {kind!r}; this node's models accept text only.", p, "unsupported_content"
                )
            raise invalid(f"'{p}.type' must be one of {', '.join(map(repr, allowed))}; got {kind!r}.", f"{p}.type")
        text = part.get("text") if kind != "refusal" else part.get("refusal")
        if not isinstance(text, str):
            key = "refusal" if kind == "refusal" else "text"
            raise invalid(f"'{p}.{key}' must be a string.", f"{p}.{key}", "invalid_type")
        texts.append(text)
    return "".join(texts)


def _messages(body: dict) -> list[dict]:
    """'instructions' and 'input' → chat messages (instructions first, as a system message)."""
    out: list[dict] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise invalid(
                f"'instructions' must be a string, not {type_name(instructions)}.", "instructions", "invalid_type"
            )
        if instructions:
            out.append({"role": "system", "content": instructions})
    items = body.get("input")
    if items is None:
        raise invalid(
            "'input' is required: a string, or an array of input items (messages, function calls and their outputs).",
            "input",
            "missing_required_parameter",
        )
    if isinstance(items, str):
        return out + [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise invalid(
            f"'input' must be a string or an array of input items, not {type_name(items)}.", "input", "invalid_type"
        )
    for i, item in enumerate(items):
        p = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"'{p}' must be an object.", p, "invalid_type")
        kind = item.get("type", "message")  # an "easy" input message has a role and no type
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise invalid(
                    f"'{p}.role' must be one of 'user', 'system', 'developer', 'assistant'; got {role!r}.",
                    f"{p}.role",
                )
            # Clients replaying an assistant turn send output_text, sometimes input_text.
            allowed = ("output_text", "refusal", "input_text") if role == "assistant" else ("input_text",)
            content = item.get("content")
            if content is None:
                raise invalid(f"'{p}.content' is required.", f"{p}.content", "missing_required_parameter")
            text = _text_of_parts(content, f"{p}.content", allowed)
            out.append({"role": "system" if role == "developer" else role, "content": text})
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
            for key, value in (("call_id", call_id), ("name", name), ("arguments", arguments)):
                if not isinstance(value, str):
                    raise invalid(f"'{p}.{key}' must be a string.", f"{p}.{key}", "invalid_type")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") is not None:
                last["tool_calls"].append(call)  # parallel calls of one turn: one assistant message
            elif last is not None and last["role"] == "assistant" and "tool_calls" not in last:
                last["tool_calls"] = [call]  # the turn's text, then its calls
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise invalid(f"'{p}.call_id' must be a string.", f"{p}.call_id", "invalid_type")
            if output is None:
                raise invalid(f"'{p}.output' is required.", f"{p}.output", "missing_required_parameter")
            text = _text_of_parts(output, f"{p}.output", ("input_text",))
            out.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "reasoning":
            continue  # a reasoning item replayed by a client: this node's models return none, nothing to add
        elif kind in ("item_reference",):
            raise _unsupported(
                f"'{p}' refers to a stored item; this node keeps none (stateless): send the item itself.", p
            )
        else:
            raise _unsupported(
                f"'{p}' has type {kind!r}; this node accepts 'message', 'function_call' and "
                f"'function_call_output' items.",
                f"{p}.type",
            )
    if not any(m["role"] != "system" for m in out):
        raise invalid("'input' must contain at least one item.", "input", "empty_array")
    return out


def _chat_tools(body: dict) -> dict[str, Any]:
    """Responses function tools, ``tool_choice`` and ``parallel_tool_calls`` → their chat form. Read by the
    tool-calling code's own parser (runtime/tools/spec.py) in its Responses mode: flat tools, strict unless
    said otherwise, errors naming the Responses fields, other tool types (``custom``, built-in tools) a
    400. ``strict`` is written out so that the chat side keeps the Responses default."""
    spec = parse_tools(body, responses=True)
    if spec is None:
        return {}
    tools = []
    for t in spec.tools:
        fn = t.openai()["function"]
        fn["strict"] = t.strict
        tools.append({"type": "function", "function": fn})
    choice: Any = spec.choice.mode
    if spec.choice.mode == "function":
        choice = {"type": "function", "function": {"name": spec.choice.name}}
    return {"tools": tools, "tool_choice": choice, "parallel_tool_calls": spec.parallel}


def _response_format(body: dict) -> dict | None:
    """'text.format' → chat completions' response_format."""
    text = body.get("text")
    if text is None:
        return None
    if not isinstance(text, dict):
        raise invalid(f"'text' must be an object, not {type_name(text)}.", "text", "invalid_type")
    if text.get("verbosity") not in (None, "medium"):
        raise _unsupported("'text.verbosity' is not supported; leave it out.", "text.verbosity")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise invalid(f"'text.format' must be an object, not {type_name(fmt)}.", "text.format", "invalid_type")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    raise invalid(
        f"'text.format.type' must be 'text', 'json_object' or 'json_schema'; got {kind!r}.", "text.format.type"
    )


def translate_request(body: dict) -> ResponsesRequest:
    """A Responses request body → the chat completions body that runs it. Raises APIError (400) naming the
    Responses field at fault. Sampling fields keep their names; the chat side checks their values."""
    for key, why in _STATEFUL.items():
        if body.get(key) is not None:
            raise _unsupported(f"'{key}' is not supported: {why}.", key)
    store = body.get("store")
    if store is not None and not isinstance(store, bool):
        raise invalid(f"'store' must be a boolean, not {type_name(store)}.", "store", "invalid_type")
    if store:
        raise _unsupported(
            "'store: true' is not supported: this node keeps no responses (the API is stateless here). "
            "Leave 'store' out or set it to false.",
            "store",
        )
    if body.get("background"):
        raise _unsupported("'background' mode is not supported; send the request and wait for it.", "background")
    include = body.get("include")
    if include is not None and (not isinstance(include, list) or not all(isinstance(x, str) for x in include)):
        raise invalid("'include' must be an array of strings.", "include", "invalid_type")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid(f"'stream' must be a boolean, not {type_name(stream)}.", "stream", "invalid_type")
    mot = body.get("max_output_tokens")
    if mot is not None and (isinstance(mot, bool) or not isinstance(mot, int) or mot < 1):
        raise invalid(f"'max_output_tokens' must be a positive integer; got {mot!r}.", "max_output_tokens")
    chat: dict[str, Any] = {"model": body.get("model"), "messages": _messages(body), "stream": stream}
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if mot is not None:
        chat["max_tokens"] = mot
    # Log probabilities: asked for with include "message.output_text.logprobs" (top_logprobs alternatives,
    # 0-20, checked on the chat side); other include values name things this node never produces
    # (reasoning, tool outputs of built-in tools), so there is nothing to add for them.
    top = body.get("top_logprobs")
    if "message.output_text.logprobs" in (include or []) or top is not None:
        chat["logprobs"] = True
        if top is not None:
            chat["top_logprobs"] = top
    chat.update(_chat_tools(body))
    rf = _response_format(body)
    if rf is not None:
        chat["response_format"] = rf
    text_field = body.get("text")
    text: dict = text_field if isinstance(text_field, dict) else {}
    echo = {
        "instructions": body.get("instructions"),
        "max_output_tokens": mot,
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "truncation": body.get("truncation") or "disabled",
        "user": body.get("user"),
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "previous_response_id": None,
        "background": False,
        "top_logprobs": top,
    }
    return ResponsesRequest(chat, stream, echo)


# Chat-side parameter names → the Responses fields they came from (errors name what the client sent).
CHAT_TO_RESPONSES_PARAM = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
}


def responses_param(param: str | None) -> str | None:
    """The Responses field behind a chat completions parameter named in an error."""
    if param is None:
        return None
    if param.startswith("messages"):
        return "input"
    if param.startswith(("tools", "tool_choice")):
        return param.replace(".function.", ".", 1).replace(".function", "", 1)  # Responses tools are flat
    head = param.partition(".")[0]
    return CHAT_TO_RESPONSES_PARAM.get(head, param)

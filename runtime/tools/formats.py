"""How a model writes tool calls: its family's native format, recognised from the GGUF's chat template, or
ClosedMesh's generic JSON protocol for templates that have none (SmolLM2, the default model, and Gemma).

Each format knows:
- how to parse a finished answer into (content, tool calls). Output that does not follow the format is
  plain content, never an exception: a model may always answer in words, and a malformed call must not
  become a 500;
- how much of an answer still being written can be shown as content (``streamable``): everything before
  the format's tool-call marker, minus a tail that could be the start of that marker;
- the marker that starts a call, as a regular expression, for a lazy grammar (``trigger``).

Formats (the markers are those the published templates teach their models):
- ``hermes``: ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` (Qwen2.5, Qwen3, Hermes);
- ``phi4``: the same JSON between ``<|tool_call|>`` and ``<|/tool_call|>`` (Phi-4-mini);
- ``qwen-xml``: ``<tool_call><function=name><parameter=p>value</parameter></function></tool_call>``
  (Qwen3-Coder);
- ``llama3``: the whole answer is ``{"name": …, "parameters": {…}}`` (Llama 3.x);
- ``mistral``: ``[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`` (Mistral);
- ``generic``: the whole answer is one JSON object, ``{"tool_call": {"name", "arguments"}}``,
  ``{"tool_calls": [...]}`` or ``{"response": "text"}``, taught by a system prompt of ours and held to
  it by a grammar from the first token.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .spec import FunctionTool, ToolsSpec

MAX_CALLS_PER_ANSWER = 16  # tool calls one answer may hold (the grammars allow no more)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text of an object


@dataclass(frozen=True)
class ParsedOutput:
    content: str | None
    calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class ToolFormat:
    name: str
    open: str = ""  # the marker that starts a call ("" for formats with none)
    close: str = ""
    trigger: str = ""  # a regular expression (Python syntax) on the answer: where a call begins

    @property
    def native(self) -> bool:
        return self.name != "generic"

    def parse(self, text: str, spec: ToolsSpec) -> ParsedOutput:
        """The answer as content and tool calls; not a valid call of an offered tool: all content."""
        names = {t.name: t for t in spec.callable_tools}
        try:
            parsed = _PARSERS[self.name](self, text, names)
        except (ValueError, TypeError, KeyError, AttributeError):  # JSON errors are ValueErrors
            parsed = None
        return parsed if parsed is not None else ParsedOutput(text)

    def streamable(self, text: str, spec: ToolsSpec) -> int:
        """How many characters of ``text`` (an answer still being written) are content for sure: they
        can be streamed now. The rest waits until the answer is complete."""
        if spec.choice.mode in ("required", "function") or self.name == "generic":
            return 0  # the whole answer is a call (or, generic, a JSON envelope)
        if self.name == "llama3":
            head = text.lstrip()
            if not head or head.startswith("{") or "<|python_tag|>".startswith(head[:14]):
                return 0
            return len(text)
        at = text.find(self.open)
        if at >= 0:
            return at
        for k in range(min(len(self.open) - 1, len(text)), 0, -1):
            if self.open.startswith(text[-k:]):
                return len(text) - k
        return len(text)


GENERIC = ToolFormat("generic")
HERMES = ToolFormat("hermes", "<tool_call>", "</tool_call>", re.escape("<tool_call>"))
PHI4 = ToolFormat("phi4", "<|tool_call|>", "<|/tool_call|>", re.escape("<|tool_call|>"))
QWEN_XML = ToolFormat("qwen-xml", "<tool_call>", "</tool_call>", re.escape("<tool_call>"))
LLAMA3 = ToolFormat("llama3", "{", "", r'^\s*(\{\s*"name")')
MISTRAL = ToolFormat("mistral", "[TOOL_CALLS]", "", re.escape("[TOOL_CALLS]"))
FORMATS = {f.name: f for f in (GENERIC, HERMES, PHI4, QWEN_XML, LLAMA3, MISTRAL)}


def detect_format(template: str | None) -> ToolFormat:
    """The tool format a chat template teaches its model, from the template's text: the markers it
    writes around calls in the history (and in its instructions). None found: the generic protocol."""
    t = template or ""
    if "<tool_call>" in t and "<function=" in t:
        return QWEN_XML
    if "<tool_call>" in t:
        return HERMES
    if "<|tool_call|>" in t:
        return PHI4
    if "[TOOL_CALLS]" in t:
        return MISTRAL
    if "<|start_header_id|>" in t and '"parameters"' in t and "tools" in t:
        return LLAMA3
    return GENERIC


# -- parsers: None when the text is not a valid set of calls ------------------------------------------


def _arguments(value: Any) -> str | None:
    if isinstance(value, str):  # some models write the arguments as a JSON string
        value = json.loads(value)
    if not isinstance(value, dict):
        return None
    return json.dumps(value, ensure_ascii=False)


def _call(obj: Any, names: dict[str, FunctionTool], args_key: str = "arguments") -> ToolCall | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    raw = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    args = _arguments(raw)
    return ToolCall(obj["name"], args) if args is not None else None


_WS = re.compile(r"\s*")


def _tagged(fmt: ToolFormat, text: str, names: dict[str, FunctionTool]) -> ParsedOutput | None:
    at = text.find(fmt.open)
    if at < 0:
        return ParsedOutput(text)
    content = text[:at].strip() or None
    calls: list[ToolCall] = []
    pos, decoder = at, json.JSONDecoder()
    while True:
        pos = _WS.match(text, pos).end()  # type: ignore[union-attr]  # \s* always matches
        if pos == len(text):
            break
        if not text.startswith(fmt.open, pos):
            return None
        pos = _WS.match(text, pos + len(fmt.open)).end()  # type: ignore[union-attr]
        obj, pos = decoder.raw_decode(text, pos)
        call = _call(obj, names)
        if call is None:
            return None
        calls.append(call)
        pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
        if text.startswith(fmt.close, pos):
            pos += len(fmt.close)
        elif pos != len(text):  # only the last call may lack its close (an answer cut at a stop)
            return None
    return ParsedOutput(content, tuple(calls))


_XML_CALL = re.compile(r"<tool_call>\s*<function=([^>\n]+)>(.*?)</function>\s*(?:</tool_call>|$)", re.S)
_XML_PARAM = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)


def _xml_value(raw: str, schema: Any) -> Any:
    """A parameter's text as the value its schema describes: strings as written, the rest as JSON."""
    types = schema.get("type") if isinstance(schema, dict) else None
    if types == "string" or (isinstance(types, list) and "string" in types and len(types) == 1):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _qwen_xml(fmt: ToolFormat, text: str, names: dict[str, FunctionTool]) -> ParsedOutput | None:
    at = text.find(fmt.open)
    if at < 0:
        return ParsedOutput(text)
    content = text[:at].strip() or None
    calls: list[ToolCall] = []
    pos = at
    for m in _XML_CALL.finditer(text, at):
        if text[pos : m.start()].strip():
            return None
        tool = names.get(m.group(1).strip())
        if tool is None:
            return None
        props = tool.parameters.get("properties") or {}
        body, args, end = m.group(2), {}, 0
        for pm in _XML_PARAM.finditer(body):
            if body[end : pm.start()].strip():
                return None
            key = pm.group(1).strip()
            args[key] = _xml_value(pm.group(2), props.get(key))
            end = pm.end()
        if body[end:].strip():
            return None
        calls.append(ToolCall(tool.name, json.dumps(args, ensure_ascii=False)))
        pos = m.end()
    if not calls or text[pos:].strip():
        return None
    return ParsedOutput(content, tuple(calls))


def _llama3(fmt: ToolFormat, text: str, names: dict[str, FunctionTool]) -> ParsedOutput | None:
    body = text.strip()
    if body.startswith("<|python_tag|>"):
        body = body[len("<|python_tag|>") :].lstrip()
    if not body.startswith("{"):
        return ParsedOutput(text)
    calls: list[ToolCall] = []
    pos, decoder = 0, json.JSONDecoder()
    while pos < len(body):
        obj, pos = decoder.raw_decode(body, pos)
        call = _call(obj, names, "parameters")
        if call is None:
            return None
        calls.append(call)
        pos = _WS.match(body, pos).end()  # type: ignore[union-attr]
        if body.startswith(";", pos):
            pos = _WS.match(body, pos + 1).end()  # type: ignore[union-attr]
    return ParsedOutput(None, tuple(calls))


def _mistral(fmt: ToolFormat, text: str, names: dict[str, FunctionTool]) -> ParsedOutput | None:
    at = text.find(fmt.open)
    if at < 0:
        return ParsedOutput(text)
    content = text[:at].strip() or None
    rest = text[at + len(fmt.open) :].strip()
    items, end = json.JSONDecoder().raw_decode(rest)
    if rest[end:].strip() or not isinstance(items, list) or not items:
        return None
    calls = [_call(obj, names) for obj in items]
    if any(c is None for c in calls):
        return None
    return ParsedOutput(content, tuple(c for c in calls if c is not None))


def _generic(fmt: ToolFormat, text: str, names: dict[str, FunctionTool]) -> ParsedOutput | None:
    obj = json.loads(text)
    if not isinstance(obj, dict) or len(obj) != 1:
        return None
    if isinstance(obj.get("response"), str):
        return ParsedOutput(obj["response"])
    items = [obj["tool_call"]] if "tool_call" in obj else obj.get("tool_calls")
    if not isinstance(items, list) or not items:
        return None
    calls = [_call(c, names) for c in items]
    if any(c is None for c in calls):
        return None
    return ParsedOutput(None, tuple(c for c in calls if c is not None))


_PARSERS = {
    "generic": _generic,
    "hermes": _tagged,
    "phi4": _tagged,
    "qwen-xml": _qwen_xml,
    "llama3": _llama3,
    "mistral": _mistral,
}

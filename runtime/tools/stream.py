"""One answer's text, as the engine writes it, turned into what the client receives when tools are in play:
content streamed as soon as it is certain to be content, and the tool calls once the answer is complete.

Calls are sent whole, each after it parsed and matched an offered tool: a client never receives a call
that later turns out malformed (it would have to be taken back, which no OpenAI stream can do). Under a
grammar a call always parses unless the answer was cut (``max_tokens``); then it is content, with
finish_reason "length". Used by every API that offers tools (chat completions, Responses) and by the
serving side of the mesh, which parses for the requester (the requester has no copy of the template).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass, replace

from ..engine.events import Failed, Finished, GenEvent, SamplingParams, Text, ToolCallDelta
from .formats import ToolCall, ToolFormat
from .grammar import tool_grammar
from .spec import ToolsSpec

_ID_CHARS = string.ascii_letters + string.digits


def new_call_id() -> str:
    """An id in OpenAI's shape (``call_`` and 24 letters or digits)."""
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


def tool_sampling(params: SamplingParams, spec: ToolsSpec | None, fmt: ToolFormat) -> SamplingParams:
    """The request's sampling parameters with its tool grammar (lazy in auto mode with a native format).
    Control tokens are written out with native formats: some markers ([TOOL_CALLS]) are control tokens."""
    if spec is None or not spec.active:
        return params
    g = tool_grammar(spec, fmt)
    if g is None:
        return params
    return replace(params, grammar=g.gbnf, grammar_triggers=g.triggers, special_text=fmt.native)


@dataclass(frozen=True)
class IdentifiedCall:
    index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Outcome:
    """The end of an answer: content not streamed yet, the calls, and the finish reason to report."""

    content: str | None  # the whole content (for a non-streamed answer)
    rest: str  # the part of ``content`` not yet given to ``feed``'s caller
    calls: tuple[IdentifiedCall, ...]
    finish_reason: str


_RESPONSE_HEAD = re.compile(r'\s*\{\s*"response"\s*:\s*"')


class _ResponseDecoder:
    """The generic protocol's ``{"response": "..."}`` answer, decoded as it is written: the JSON string's
    text is streamed as content, never cut inside an escape or between the two halves of a surrogate pair,
    so the pieces add up to exactly what ``json.loads`` gives for the whole."""

    def __init__(self) -> None:
        self._start: int | None = None  # where the string's text begins in the raw answer
        self._done = 0  # raw characters decoded so far (from the start)
        self.closed = False

    def feed(self, raw: str) -> str:
        if self.closed:
            return ""
        if self._start is None:
            m = _RESPONSE_HEAD.match(raw)
            if m is None:
                return ""
            self._start = self._done = m.end()
        i, n = self._done, len(raw)
        while i < n:
            ch = raw[i]
            if ch == '"':
                self.closed = True
                break
            if ch != "\\":
                i += 1
                continue
            if i + 1 >= n:
                break
            if raw[i + 1] != "u":
                i += 2
                continue
            if i + 6 > n:
                break
            if raw[i + 2 : i + 4].lower() in ("d8", "d9", "da", "db"):  # a high surrogate: wait for its pair
                if i + 12 > n:
                    break
                i += 12 if raw[i + 6 : i + 8] == "\\u" else 6
                continue
            i += 6
        segment, self._done = raw[self._done : i], i
        try:
            return json.loads('"' + segment + '"') if segment else ""
        except ValueError:  # not JSON after all: stream nothing more
            self.closed = True
            return ""


class ToolCallStream:
    """Feed it the answer's text pieces; ``feed`` returns the content that can be streamed now, ``finish``
    the rest and the calls."""

    def __init__(self, spec: ToolsSpec, fmt: ToolFormat) -> None:
        self.spec = spec
        self.fmt = fmt
        self._sent: list[str] = []
        self._pending = ""  # text not streamed yet: it may be (the start of) a call
        # The generic protocol in auto mode may answer {"response": "..."}: its text streams as it comes.
        self._response = _ResponseDecoder() if fmt.name == "generic" and spec.choice.mode == "auto" else None

    def feed(self, text: str) -> str:
        self._pending += text
        if self._response is not None:  # the raw answer stays whole in _pending; _sent holds decoded text
            out = self._response.feed(self._pending)
            if out:
                self._sent.append(out)
            return out
        n = self.fmt.streamable(self._pending, self.spec)
        if n <= 0:
            return ""
        out, self._pending = self._pending[:n], self._pending[n:]
        self._sent.append(out)
        return out

    def finish(self, finish_reason: str) -> Outcome:
        if self._response is not None:
            return self._finish_generic(finish_reason)
        whole = "".join(self._sent) + self._pending
        parsed = self.fmt.parse(whole, self.spec)
        calls: tuple[ToolCall, ...] = parsed.calls
        if calls:
            ided = tuple(IdentifiedCall(i, new_call_id(), c.name, c.arguments) for i, c in enumerate(calls))
            reason = self.spec.finish_reason if finish_reason == "stop" else finish_reason
            return Outcome(parsed.content, "", ided, reason)
        if parsed.content != whole:  # the generic protocol's {"response": ...}: nothing was streamed
            return Outcome(parsed.content, parsed.content or "", (), finish_reason)
        return Outcome(whole, self._pending, (), finish_reason)

    def _finish_generic(self, finish_reason: str) -> Outcome:
        whole, streamed = self._pending, "".join(self._sent)
        parsed = self.fmt.parse(whole, self.spec)
        if parsed.calls:
            ided = tuple(IdentifiedCall(i, new_call_id(), c.name, c.arguments) for i, c in enumerate(parsed.calls))
            reason = self.spec.finish_reason if finish_reason == "stop" else finish_reason
            return Outcome(None, "", ided, reason)
        content = parsed.content or ""
        if parsed.content != whole and content.startswith(streamed):  # {"response": ...}
            return Outcome(content, content[len(streamed) :], (), finish_reason)
        if streamed:  # a response cut short (max_tokens): what was decoded of it is the content
            return Outcome(streamed, "", (), finish_reason)
        return Outcome(whole, whole, (), finish_reason)  # not the protocol: the raw text

    def events(self, ev: GenEvent) -> list[GenEvent]:
        """One event of the engine, as the answer's events: text that is content for sure, and at the end
        the rest of the content, one ToolCallDelta per call (id, name and all of its arguments), and
        Finished with the finish reason of a tool-calling answer. Other events pass through."""
        if isinstance(ev, Text):
            shown = self.feed(ev.text)
            return [replace(ev, text=shown)] if shown else []
        if isinstance(ev, Finished):
            out = self.finish(ev.finish_reason)
            evs: list[GenEvent] = [Text(out.rest)] if out.rest else []
            evs += [ToolCallDelta(c.index, c.id, c.name, c.arguments) for c in out.calls]
            evs.append(replace(ev, finish_reason=out.finish_reason))
            return evs
        if isinstance(ev, Failed) and ev.code == "invalid_grammar" and ev.status is None:
            # The grammar that failed is the tools' (response_format is refused beside active tools).
            return [replace(ev, code="invalid_value", status=400, type="invalid_request_error", param="tools")]
        return [ev]

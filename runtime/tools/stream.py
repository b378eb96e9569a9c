"""One answer's text, as the engine writes it, turned into what the client receives when tools are in play:
content streamed as soon as it is certain to be content, and the tool calls once the answer is complete.

Calls are sent whole, each after it parsed and matched an offered tool: a client never receives a call
that later turns out malformed (it would have to be taken back, which no OpenAI stream can do). Under a
grammar a call always parses unless the answer was cut (``max_tokens``); then it is content, with
finish_reason "length". Used by every API that offers tools (chat completions, Responses) and by the
serving side of the mesh, which parses for the requester (the requester has no copy of the template).
"""

from __future__ import annotations

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


class ToolCallStream:
    """Feed it the answer's text pieces; ``feed`` returns the content that can be streamed now, ``finish``
    the rest and the calls."""

    def __init__(self, spec: ToolsSpec, fmt: ToolFormat) -> None:
        self.spec = spec
        self.fmt = fmt
        self._sent: list[str] = []
        self._pending = ""  # text not streamed yet: it may be (the start of) a call

    def feed(self, text: str) -> str:
        self._pending += text
        n = self.fmt.streamable(self._pending, self.spec)
        if n <= 0:
            return ""
        out, self._pending = self._pending[:n], self._pending[n:]
        self._sent.append(out)
        return out

    def finish(self, finish_reason: str) -> Outcome:
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

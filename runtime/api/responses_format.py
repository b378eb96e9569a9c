"""The Responses API's wire format (POST /v1/responses): a Response object and its stream of events,
built from the generation vocabulary (runtime/engine/events.py) of the chat completion that runs it.
Pure: the route (api/responses_routes.py) feeds events in and writes what comes out; beside
openai_format.py, which does the same for chat and text completions.

Stream events, each with a ``sequence_number`` counted from 0, in this order: ``response.created``,
``response.in_progress``; per output item ``response.output_item.added``, then for a message
``response.content_part.added``, ``response.output_text.delta``…, ``response.output_text.done``,
``response.content_part.done``, or for a function call ``response.function_call_arguments.delta``…,
``response.function_call_arguments.done``; then ``response.output_item.done``; finally one of
``response.completed`` (with usage), ``response.incomplete`` (``incomplete_details.reason``
``max_output_tokens``) or ``response.failed`` (with ``error``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from ..engine.events import Failed, Finished, GenEvent, Text, ToolCallDelta


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class _Item:
    """One output item being built: a message (text) or a function call (arguments)."""

    kind: str  # "message" | "function_call"
    id: str
    text: list[str] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)  # a message's, when the request asked for them
    call_id: str = ""
    name: str = ""
    done: bool = False
    status: str = "in_progress"  # as closed: "completed" or "incomplete"

    def part(self) -> dict:
        """A message's output_text part as it stands."""
        return {"type": "output_text", "text": "".join(self.text), "annotations": [], "logprobs": self.logprobs}

    def body(self, status: str) -> dict:
        if self.kind == "message":
            content = [self.part()]
            return {
                "type": "message",
                "id": self.id,
                "status": status,
                "role": "assistant",
                "content": content if status != "in_progress" else [],
            }
        return {
            "type": "function_call",
            "id": self.id,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": "".join(self.text) if status != "in_progress" else "",
            "status": status,
        }


class ResponseBuilder:
    """Builds one Response from generation events, and the stream events that tell it as it happens.

    Feed it ``text``, ``tool_call`` and then one of ``finish`` / ``fail``; each returns the stream events
    to send (a non-streaming answer ignores them and sends ``response()`` at the end)."""

    def __init__(self, model: str, echo: dict, created_at: int, response_id: str | None = None) -> None:
        self.id = response_id or new_id("resp")
        self.model = model
        self.echo = echo
        self.created_at = created_at
        self.status = "in_progress"
        self.items: list[_Item] = []
        self.usage: dict | None = None
        self.error: dict | None = None
        self.incomplete: dict | None = None
        self._seq = 0
        self._calls: dict[int, _Item] = {}  # tool call index → its item
        self.pieces = 0  # text and tool-call pieces fed (one per token), for what a cut-short answer cost

    def feed(self, ev: GenEvent) -> list[dict]:
        """One event of the answer (its only choice) → the stream events it makes (Started makes none:
        ``start`` opens the stream)."""
        if isinstance(ev, Text):
            self.pieces += 1
            return self.text(ev.text, ev.logprobs)
        if isinstance(ev, ToolCallDelta):
            self.pieces += 1
            return self.tool_call(ev.index, ev.id, ev.name, ev.arguments_fragment)
        if isinstance(ev, Finished):
            return self.finish(
                ev.finish_reason, responses_usage(ev.prompt_tokens, ev.completion_tokens, ev.cached_tokens)
            )
        if isinstance(ev, Failed):
            err = ev.error()
            return self.fail(err.message, "invalid_prompt" if err.status < 500 else "server_error")
        return []

    # -- events ------------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict:
        ev = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return ev

    def start(self) -> list[dict]:
        return [
            self._event("response.created", response=self.response()),
            self._event("response.in_progress", response=self.response()),
        ]

    def _open(self, item: _Item) -> list[dict]:
        self.items.append(item)
        idx = len(self.items) - 1
        out = [self._event("response.output_item.added", output_index=idx, item=item.body("in_progress"))]
        if item.kind == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(
                self._event(
                    "response.content_part.added", item_id=item.id, output_index=idx, content_index=0, part=part
                )
            )
        return out

    def _close(self, idx: int, status: str) -> list[dict]:
        item = self.items[idx]
        if item.done:
            return []
        item.done = True
        item.status = status
        whole = "".join(item.text)
        if item.kind == "message":
            part = item.part()
            out = [
                self._event(
                    "response.output_text.done",
                    item_id=item.id,
                    output_index=idx,
                    content_index=0,
                    text=whole,
                    logprobs=item.logprobs,
                ),
                self._event(
                    "response.content_part.done", item_id=item.id, output_index=idx, content_index=0, part=part
                ),
            ]
        else:
            out = [
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=idx,
                    name=item.name,
                    arguments=whole,
                )
            ]
        out.append(self._event("response.output_item.done", output_index=idx, item=item.body(status)))
        return out

    def _close_open(self, status: str) -> list[dict]:
        out: list[dict] = []
        for idx in range(len(self.items)):
            out += self._close(idx, status)
        return out

    def text(self, delta: str, logprobs: list[dict] | None = None) -> list[dict]:
        """Answer text (with its tokens' log probabilities when the request asked for them). It opens a
        message item, unless one is open as the last item."""
        last = self.items[-1] if self.items else None
        if not delta:
            if logprobs and last is not None and last.kind == "message" and not last.done:
                last.logprobs.extend(logprobs)  # a held-back tail's tokens: in the done events and the object
            return []
        out: list[dict] = []
        if last is None or last.kind != "message" or last.done:
            out += self._close_open("completed")
            out += self._open(_Item("message", new_id("msg")))
            last = self.items[-1]
        last.text.append(delta)
        if logprobs:
            last.logprobs.extend(logprobs)
        idx = len(self.items) - 1
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=last.id,
                output_index=idx,
                content_index=0,
                delta=delta,
                logprobs=logprobs or [],
            )
        )
        return out

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> list[dict]:
        """A fragment of the tool call ``index``: its first fragment names it (``call_id``, ``name``)."""
        out: list[dict] = []
        item = self._calls.get(index)
        if item is None:
            # A message before the call is finished; so is an earlier call (calls come one after another).
            out += self._close_open("completed")
            item = _Item("function_call", new_id("fc"), call_id=call_id or new_id("call"), name=name or "")
            self._calls[index] = item
            out += self._open(item)
        if arguments:
            item.text.append(arguments)
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=self.items.index(item),
                    delta=arguments,
                )
            )
        return out

    def finish(self, finish_reason: str, usage: dict) -> list[dict]:
        """The generation ended: "length" makes the response incomplete (max_output_tokens)."""
        self.usage = usage
        if finish_reason == "length":
            out = self._close_open("incomplete")
            self.status = "incomplete"
            self.incomplete = {"reason": "max_output_tokens"}
            return out + [self._event("response.incomplete", response=self.response())]
        out = self._close_open("completed")
        self.status = "completed"
        return out + [self._event("response.completed", response=self.response())]

    def fail(self, message: str, code: str = "server_error") -> list[dict]:
        """The generation failed after the response started (the engine stopped, a grammar dead end)."""
        self.status = "failed"
        self.error = {"code": code, "message": message}
        return [self._event("response.failed", response=self.response())]

    # -- the object -----------------------------------------------------------------------------------

    def response(self) -> dict:
        """The Response object as it stands."""
        output = []
        for item in self.items:
            # An item still open when the response failed ends there, with what it had.
            status = item.status if item.done or self.status != "failed" else "incomplete"
            output.append(item.body(status))
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "error": self.error,
            "incomplete_details": self.incomplete,
            "model": self.model,
            "output": output,
            "usage": self.usage,
            **self.echo,
        }


def billed(builder: ResponseBuilder) -> tuple[int, int]:
    """(prompt, completion) tokens a response cost, for an entry node's per-key usage: its usage once it
    finished, else the pieces produced before it was cut short."""
    if builder.usage is not None:
        return builder.usage["input_tokens"], builder.usage["output_tokens"]
    return 0, builder.pieces


def responses_usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }

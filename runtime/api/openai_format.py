"""The OpenAI wire format of an answer: response bodies, stream chunks and usage, for chat and text
completions, from the generation vocabulary (runtime/engine/events.py). Pure functions and plain data:
the same code formats an answer from this node's engine and one from a mesh peer.

``Tally`` gathers an answer's events per choice; ``Completion`` is what every body and chunk of one
answer shares; ``chunks`` turns one event into the stream chunks it makes; ``body`` is the whole
non-streamed response.

Log probabilities (when the request asked for them, ``Completion.logprobs``) come on the Text events as
entries in OpenAI's chat shape (events.Text). Chat: ``choices[].logprobs = {"content": [entries],
"refusal": null}``, a chunk carrying the entries of its text. Completions (legacy): ``{tokens,
token_logprobs, top_logprobs, text_offset}``, ``top_logprobs`` holding the most likely tokens and always
the sampled one (up to logprobs + 1, as OpenAI documents), ``text_offset`` each token's character offset
in the choice's text.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from ..engine.events import Finished, GenEvent, Started, Text, ToolCallDelta


@dataclass
class Choice:
    text: list[str] = field(default_factory=list)
    started: Started | None = None
    finished: Finished | None = None
    logprobs: list[dict] = field(default_factory=list)  # when the request asked for them
    tool_calls: list[dict] = field(default_factory=list)  # OpenAI-shaped, assembled from ToolCallDelta


class Tally:
    """An answer's choices as their events arrive. ``per_prompt``: choices per prompt (the request's
    ``n``): the choices of one prompt share it, so usage counts its tokens once, as OpenAI does."""

    def __init__(self, n: int, per_prompt: int) -> None:
        self.choices = [Choice() for _ in range(n)]
        self.per_prompt = max(1, per_prompt)

    def add(self, index: int, ev: GenEvent) -> None:
        c = self.choices[index]
        if isinstance(ev, Text):
            c.text.append(ev.text)
            if ev.logprobs:
                c.logprobs.extend(ev.logprobs)
        elif isinstance(ev, Started):
            c.started = ev
        elif isinstance(ev, Finished):
            c.finished = ev
        elif isinstance(ev, ToolCallDelta):
            if ev.id is not None:
                fn = {"name": ev.name or "", "arguments": ""}
                c.tool_calls.append({"id": ev.id, "type": "function", "function": fn})
            if c.tool_calls:
                c.tool_calls[-1]["function"]["arguments"] += ev.arguments_fragment

    @property
    def all_started(self) -> bool:
        return all(c.started is not None for c in self.choices)

    def first_started(self) -> Started | None:
        return next((c.started for c in self.choices if c.started is not None), None)

    def usage(self) -> dict:
        prompts: dict[int, int] = {}
        for i, c in enumerate(self.choices):
            if c.started is not None:
                g = i // self.per_prompt
                prompts[g] = max(prompts.get(g, 0), c.started.prompt_tokens)
        done = [c.finished for c in self.choices if c.finished is not None]
        return usage(
            sum(prompts.values()),
            sum(f.completion_tokens for f in done),
            min((f.cached_tokens for f in done), default=0),
        )

    def billed(self) -> tuple[int, int]:
        """(prompt, completion) tokens the answer cost so far: finished choices by their usage, any cut
        short (the client went away, an error) by the pieces produced (one per token), for an entry
        node's per-key usage."""
        u = self.usage()
        cut_short = sum(len(c.text) for c in self.choices if c.finished is None)
        return u["prompt_tokens"], u["completion_tokens"] + cut_short


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


@dataclass(frozen=True)
class Completion:
    """What every body and chunk of one answer shares. ``kind``: "chat" or "completion";
    ``include_usage``: the request's ``stream_options.include_usage`` (chunks then carry ``usage: null``
    until the final usage chunk); ``logprobs``: the request asked for log probabilities."""

    kind: str
    id: str
    created: int
    model: str
    fingerprint: str | None
    include_usage: bool = False
    tools: bool = False  # the model may answer with tool calls: a chat stream opens with content null
    logprobs: bool = False

    @classmethod
    def new(
        cls,
        kind: str,
        created: int,
        model: str,
        fingerprint: str | None,
        include_usage: bool = False,
        tools: bool = False,
        logprobs: bool = False,
    ) -> Completion:
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        return cls(
            kind, f"{prefix}-{uuid.uuid4()}", created, model, fingerprint, include_usage, tools=tools, logprobs=logprobs
        )


def _head(c: Completion, obj: str) -> dict:
    return {"id": c.id, "object": obj, "created": c.created, "model": c.model, "system_fingerprint": c.fingerprint}


def _chunk(c: Completion, choices: list[dict]) -> dict:
    d = _head(c, "chat.completion.chunk" if c.kind == "chat" else "text_completion")
    d["choices"] = choices
    if c.include_usage:
        d["usage"] = None
    return d


def chat_logprobs(entries: list[dict]) -> dict:
    return {"content": entries, "refusal": None}


def completion_logprobs(entries: list[dict], offset: int) -> dict:
    """The legacy ``logprobs`` object of a completion's text; ``offset``: the character offset of the
    first entry's text in the choice's text."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for e in entries:
        tokens.append(e["token"])
        token_logprobs.append(e["logprob"])
        top = {t["token"]: t["logprob"] for t in e["top_logprobs"]}
        top.setdefault(e["token"], e["logprob"])
        tops.append(top)
        offsets.append(offset)
        offset += len(e["token"])
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def chunk(
    c: Completion,
    index: int,
    text: str | None,
    finish_reason: str | None,
    logprobs: list[dict] | None = None,
    offset: int = 0,
) -> dict:
    """One stream chunk: a choice's text (with the log probabilities of its tokens when the request asked
    for them; ``offset``: where the text starts in the choice's, for a completion), or (``text`` None) its
    end."""
    wants = c.logprobs and text is not None and finish_reason is None
    if c.kind == "chat":
        delta = {"content": text} if text is not None else {}
        lp = chat_logprobs(logprobs or []) if wants else None
        return _chunk(c, [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}])
    lp = completion_logprobs(logprobs or [], offset) if wants else None
    return _chunk(c, [{"text": text or "", "index": index, "logprobs": lp, "finish_reason": finish_reason}])


def opening_chunks(c: Completion, n: int, echo: list[str] | None) -> list[dict]:
    """What a stream starts with: a chat's assistant role for every choice; a completion's echoed prompts."""
    if c.kind == "chat":
        return [
            _chunk(
                c,
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": None if c.tools else ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            )
            for i in range(n)
        ]
    return [chunk(c, i, echo[i], None) for i in range(n)] if echo else []


def chunks(c: Completion, index: int, ev: GenEvent, offset: int = 0) -> list[dict]:
    """The stream chunks one event of choice ``index`` makes (Started makes none: the stream's opening
    covers it; a failure is the caller's, see runtime/api/openai_routes.py). ``offset``: the characters of
    the choice sent before this event (a completion's text_offset)."""
    if isinstance(ev, Text):
        return [chunk(c, index, ev.text, None, ev.logprobs, offset)]
    if isinstance(ev, Finished):
        return [chunk(c, index, None, ev.finish_reason)]
    if isinstance(ev, ToolCallDelta):
        return tool_call_chunks(c, index, ev)
    return []


def tool_call_chunks(c: Completion, index: int, ev: ToolCallDelta) -> list[dict]:
    """A call's first delta carries its index, id, type, name and empty arguments; later deltas only the
    index and argument fragments. openai-python's stream helper concatenates every id, name and arguments
    piece it receives, so none is ever repeated."""

    def one(call: dict) -> dict:
        delta = {"tool_calls": [call]}
        return _chunk(c, [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])

    out = []
    if ev.id is not None:
        fn = {"name": ev.name or "", "arguments": ""}
        out.append(one({"index": ev.index, "id": ev.id, "type": "function", "function": fn}))
    if ev.arguments_fragment:
        out.append(one({"index": ev.index, "function": {"arguments": ev.arguments_fragment}}))
    return out


def usage_chunk(c: Completion, u: dict) -> dict:
    """The final chunk of a stream that asked for usage: no choices."""
    d = _chunk(c, [])
    d["usage"] = u
    return d


def body(c: Completion, tally: Tally, echo: list[str] | None) -> dict:
    """The whole response of a non-streamed answer (every choice finished)."""
    choices = []
    for i, ch in enumerate(tally.choices):
        text = "".join(ch.text)
        finish = ch.finished.finish_reason if ch.finished else None
        if c.kind == "chat":
            message: dict = {"role": "assistant", "content": text, "refusal": None}
            if ch.tool_calls:  # as OpenAI: content null unless the model also wrote words
                message["content"] = text or None
                message["tool_calls"] = ch.tool_calls
            lp = chat_logprobs(ch.logprobs) if c.logprobs else None
            choices.append({"index": i, "message": message, "logprobs": lp, "finish_reason": finish})
        else:
            head = echo[i] if echo else ""
            lp = completion_logprobs(ch.logprobs, len(head)) if c.logprobs else None
            choices.append({"text": head + text, "index": i, "logprobs": lp, "finish_reason": finish})
    d = _head(c, "chat.completion" if c.kind == "chat" else "text_completion")
    d["choices"] = choices
    d["usage"] = tally.usage()
    return d

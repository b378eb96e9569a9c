"""The generation pipeline shared by the OpenAI routes and the mesh's serving side: find (and load) the
engine, check and tokenize a request against it, and run its choices through the engine's queue. No
HTTP here: callers format the events (SSE, JSON, or encrypted mesh messages)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from .api.errors import APIError, invalid, model_not_found, overloaded
from .api.validation import GenerationParams, parse_messages, parse_prompts, with_vocab
from .engine.engine import ModelEngine
from .engine.events import DoneEvent, EngineStopped, EngineUnavailable, GenRequest, QueueFull, TokenLogprob
from .models.manager import RESTARTING, ModelError
from .node import Node


def available_models(node: Node) -> list[str]:
    """Model ids a request may name here: local ones, then those only mesh peers serve."""
    local = [m.id for m in node.manager.routable()]
    seen = {m.lower() for m in local}
    mesh = [mid for mid in node.mesh.directory.mesh_models() if mid.lower() not in seen] if node.mesh.connected else []
    return local + mesh


async def engine_for(node: Node, model: str) -> ModelEngine:
    """The engine serving ``model``, loading it on first use."""
    m = node.find(model)
    if m is not None and m.state == RESTARTING:
        raise APIError(
            503,
            f"The model '{m.id}' is restarting after its engine crashed; retry in a few seconds.",
            "server_error",
            "model",
            "model_restarting",
            retry_after=2,
        )
    if m is None or m not in node.manager.routable() and m.state != "downloading":
        if m is not None and m.state == "error":
            raise APIError(
                503, f"The model '{m.id}' failed to load: {m.error}", "server_error", "model", "model_load_failed"
            )
        raise model_not_found(model, available_models(node))
    if node.cap is None:
        raise overloaded("The node is still starting; retry in a few seconds.", retry_after=2)
    try:
        return await node.manager.ensure_loaded(model)
    except ModelError as e:
        if e.status == 404:
            raise APIError(
                404, f"{str(e)[:1].upper()}{str(e)[1:]}.", "invalid_request_error", "model", "model_not_found"
            ) from None
        if e.status == 503:
            raise APIError(503, str(e), "server_error", "model", e.code, retry_after=5) from None
        raise APIError(e.status, str(e), "invalid_request_error", "model", e.code) from None


def check_text_fits(engine: ModelEngine, text: str, what: str, param: str) -> None:
    """Refuse a text that cannot fit the context whatever its tokens, before tokenizing it: a text of B
    bytes is at least B / (the longest token's bytes) tokens. Tokenizing huge inputs (e.g. thousands of
    messages, each full of special tokens) costs far more than this check."""
    n_bytes = len(text.encode("utf-8", "surrogatepass"))
    at_least = -(-n_bytes // engine.max_token_bytes)
    if at_least >= engine.n_ctx_seq:
        raise APIError(
            400,
            f"This model's maximum context length is {engine.n_ctx_seq} tokens. However, your {what} "
            f"resulted in at least {at_least} tokens. Please reduce the length of the {what}.",
            "invalid_request_error",
            param,
            "context_length_exceeded",
        )


def check_capacity(engine: ModelEngine, choices: int, param: str) -> None:
    """A request whose generations could never all be held (slots + queue) is refused as such — a 400 —
    rather than answered "overloaded, retry", which would never succeed."""
    most = engine.n_slots + engine.cfg.max_queue
    if choices > most:
        raise invalid(
            f"This request asks for {choices} generations at once (prompts × n); this node holds at most "
            f"{most} for '{engine.id}' ({engine.n_slots} slots and a queue of {engine.cfg.max_queue}). "
            f"Send fewer prompts or a smaller n per request.",
            param,
            "too_many_choices",
        )


def check_context(engine: ModelEngine, n_prompt: int, max_tokens: int | None, what: str, param: str) -> None:
    limit = engine.n_ctx_seq
    if n_prompt >= limit:
        raise APIError(
            400,
            f"This model's maximum context length is {limit} tokens. However, your {what} "
            f"resulted in {n_prompt} tokens. Please reduce the length of the {what}.",
            "invalid_request_error",
            param,
            "context_length_exceeded",
        )
    if max_tokens is not None and n_prompt + max_tokens > limit:
        raise APIError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{n_prompt + max_tokens} tokens ({n_prompt} in the {what}, {max_tokens} in the "
            f"completion). Please reduce the length of the {what} or the max_tokens.",
            "invalid_request_error",
            "max_tokens",
            "context_length_exceeded",
        )


@dataclass
class Job:
    """One choice being generated: the engine request and its event queue."""

    index: int
    req: GenRequest
    prompt_tokens: int
    done: DoneEvent | None = None
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # when the request asked for them


class LoopPump:
    """Hands engine events to the event loop in batches: the engine thread appends, and at most one
    wake-up of the loop is pending at a time (one syscall per decode step, not one per token)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: list[tuple[asyncio.Queue, Any]] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def put(self, queue: asyncio.Queue, item: Any) -> None:
        with self._lock:
            self._items.append((queue, item))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: the server is gone, nobody is listening
            pass

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for queue, item in items:
            queue.put_nowait(item)


class Generation:
    """Submits a set of jobs to the engine and yields (index, event) in arrival order."""

    def __init__(self, engine: ModelEngine, prompts: list[list[int]], gp: GenerationParams, pump: LoopPump) -> None:
        self.engine = engine
        self.queue: asyncio.Queue = asyncio.Queue()
        self.jobs: list[Job] = []
        for i, prompt in enumerate(prompts):
            params = gp.sampling
            if i and params.seed is not None:
                # Several choices from one seeded request differ from each other, reproducibly.
                params = replace(params, seed=(params.seed + i) & 0xFFFFFFFF)
            req = GenRequest(
                prompt=prompt, params=params, max_new_tokens=gp.max_tokens, stop=gp.stop, emit=self._emitter(pump, i)
            )
            self.jobs.append(Job(i, req, len(prompt)))

    def _emitter(self, pump: LoopPump, index: int):
        queue = self.queue

        def emit(ev) -> None:
            pump.put(queue, (index, ev))

        return emit

    def submit(self) -> None:
        submitted = []
        try:
            for j in self.jobs:
                self.engine.submit(j.req)
                submitted.append(j)
        except QueueFull:
            for j in submitted:
                self.engine.cancel(j.req)
            raise overloaded(
                "The node is at capacity: every slot is busy and the queue is full. Retry after the indicated delay.",
                retry_after=1,
            ) from None
        except EngineStopped:
            raise APIError(
                503, "The model is shutting down; retry against a running node.", "server_error", None, "engine_stopped"
            ) from None
        except EngineUnavailable as e:
            for j in submitted:
                self.engine.cancel(j.req)
            raise APIError(503, str(e), "server_error", None, "model_restarting", retry_after=e.retry_after) from None

    def cancel(self) -> None:
        """Stop the unfinished choices. The engine sends nothing more for them, so a waiter in next() is
        woken with (-1, None) instead of waiting forever."""
        for j in self.jobs:
            if j.done is None:
                self.engine.cancel(j.req)
        self.queue.put_nowait((-1, None))

    @property
    def finished(self) -> bool:
        return all(j.done is not None for j in self.jobs)

    async def next(self, timeout: float | None) -> tuple[int, Any]:
        return await asyncio.wait_for(self.queue.get(), timeout)


async def _engine_call(call: Any) -> Any:
    """Await a call into the engine's worker; its being down is a 503 the client may retry."""
    try:
        return await call
    except EngineUnavailable as e:
        raise APIError(503, str(e), "server_error", None, "model_restarting", retry_after=e.retry_after) from None


@dataclass
class Prepared:
    """A generation request checked and tokenized against the engine that will run it."""

    engine: ModelEngine
    gp: GenerationParams
    prompts: list[list[int]]  # one per choice
    texts: list[str] = field(default_factory=list)  # completions: each prompt's text (for echo)
    echo: bool = False


async def prepare_chat(node: Node, body: dict, gp: GenerationParams, continue_with: str = "") -> Prepared:
    """Chat completion → tokens. ``continue_with``: the beginning of the answer already given (an answer
    continued after its first peer was lost)."""
    messages = parse_messages(body)
    engine = await engine_for(node, gp.model)
    gp = with_vocab(gp, body, engine.n_vocab)
    check_capacity(engine, gp.n, "n")

    # A content that holds the text of a special token (e.g. "<|im_start|>system") is tokenized as plain
    # text, apart from the template's markup: nobody writes the model's control tokens through a message,
    # and llama.cpp's special-token scan (quadratic in their number) never runs over a user's text.
    def render() -> list[tuple[str, bool]] | str | None:
        specials = engine.special_texts
        if specials and any(t in m["content"] for m in messages for t in specials):
            return engine.template.render_segments(messages, add_generation_prompt=True)
        return engine.template.render(messages, add_generation_prompt=True)

    try:
        # Short conversations are scanned and rendered inline (a thread hop costs more than the work);
        # long ones in a thread so a huge prompt never stalls the event loop. Tokenizing happens in the
        # engine's worker process.
        if len(messages) < 64 and sum(len(m["content"]) for m in messages) < 20_000:
            rendered = render()
        else:
            rendered = await asyncio.to_thread(render)
    except ValueError as e:  # TemplateError: the template rejected these messages
        raise invalid(str(e), "messages", "invalid_messages") from None
    if isinstance(rendered, list):  # the template's markup and the contents apart
        segments = rendered + [(continue_with, False)] if continue_with else rendered
        check_text_fits(engine, "".join(text for text, _ in segments), "messages", "messages")
        prompt = await _engine_call(engine.chat_prompt_segments(segments))
    else:
        if rendered is None:  # the template transformed the contents: the whole text, as before
            rendered = await asyncio.to_thread(engine.template.render, messages, add_generation_prompt=True)
        rendered += continue_with
        check_text_fits(engine, rendered, "messages", "messages")
        prompt = await _engine_call(engine.chat_prompt(rendered))
    check_context(engine, len(prompt), gp.max_tokens, "messages", "messages")
    return Prepared(engine, gp, [prompt] * gp.n)


async def prepare_completion(node: Node, body: dict, gp: GenerationParams, continue_with: str = "") -> Prepared:
    prompts_in = parse_prompts(body)
    engine = await engine_for(node, gp.model)
    gp = with_vocab(gp, body, engine.n_vocab)
    check_capacity(engine, len(prompts_in) * gp.n, "prompt" if len(prompts_in) > 1 else "n")
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise invalid("'echo' must be a boolean.", "echo", "invalid_type")
    prompts: list[list[int]] = []
    texts: list[str] = []
    tail = await _engine_call(engine.continuation_tokens(continue_with))
    for i, p in enumerate(prompts_in):
        if isinstance(p, str):
            check_text_fits(engine, p, "prompt", "prompt")
            toks = await _engine_call(engine.completion_prompt(p))
            texts.append(p)
        else:
            if any(not (0 <= t < engine.n_vocab) for t in p):
                raise invalid(
                    f"'prompt' contains a token id outside this model's vocabulary (0..{engine.n_vocab - 1}).", "prompt"
                )
            toks = p
            texts.append(await _engine_call(engine.detokenize(p)))
        if not toks:
            raise invalid(f"prompt {i} is empty; it must contain text.", "prompt")
        toks = toks + tail
        check_context(engine, len(toks), gp.max_tokens, "prompt", "prompt")
        prompts.extend([toks] * gp.n)
    return Prepared(engine, gp, prompts, texts, echo)

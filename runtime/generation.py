"""The generation pipeline: find (and load) the engine, check and tokenize a request against it, and run
its choices through the engine's queue. Used for this node's own answers and for the requests it
serves to mesh peers. No HTTP here: an answer is a stream of the generation vocabulary
(runtime/engine/events.py) that callers format (OpenAI JSON or SSE, or sealed mesh messages).

``GenerationService`` is owned by the node; it sees of the node only its models, its capability and the
model ids a request may name (for the 404 message), and it holds the one ``LoopPump``.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from . import __version__
from .engine.engine import ModelEngine
from .engine.events import (
    EngineEvent,
    EngineStopped,
    EngineUnavailable,
    GenEvent,
    GenRequest,
    QueueFull,
    Started,
    is_final,
)
from .errors import APIError, invalid, model_not_found, overloaded
from .models.manager import RESTARTING, ManagedModel, ModelError
from .tools.formats import GENERIC, ToolFormat, detect_format
from .tools.prompt import control_text_in_tool_parts, render_with_tools
from .tools.stream import ToolCallStream, tool_sampling
from .validation import GenerationParams, parse_messages, parse_prompts, with_vocab


class Models(Protocol):
    """The node's models, as generation needs them (runtime.models.manager.ModelManager)."""

    def get(self, model_id: str) -> ManagedModel | None: ...

    def routable(self) -> list[ManagedModel]: ...

    async def ensure_loaded(self, model_id: str) -> ModelEngine: ...


def fingerprint(*parts: str) -> str:
    """OpenAI's ``system_fingerprint``: which build answered (runtime version, model file, backend)."""
    return "fp_" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:10]


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


class Answer:
    """The choices of one request as they are produced, here or on peers: (choice index, event) in
    arrival order. Each choice starts with ``Started`` and ends with ``Finished`` or ``Failed``.
    ``echo``: for a completion that asked for it, each choice's prompt text (sent before its text)."""

    def __init__(self, n: int, echo: list[str] | None = None) -> None:
        self.n = n
        self.echo = echo
        self.queue: asyncio.Queue[tuple[int, GenEvent] | None] = asyncio.Queue()
        self._open = set(range(n))  # choices whose last event was not handed out yet

    def put(self, index: int, ev: GenEvent) -> None:
        self.queue.put_nowait((index, ev))

    @property
    def finished(self) -> bool:
        return not self._open

    async def next(self, timeout: float | None) -> list[tuple[int, GenEvent]]:
        """Every event that has arrived, waiting ``timeout`` seconds for the first (raises TimeoutError).
        Empty when woken by ``cancel``. Events of a choice after its last one are dropped."""
        item = await asyncio.wait_for(self.queue.get(), timeout) if timeout is not None else await self.queue.get()
        out: list[tuple[int, GenEvent]] = []
        while True:
            if item is not None and item[0] in self._open:
                out.append(item)
                if is_final(item[1]):
                    self._open.discard(item[0])
            if self.queue.empty():
                return out
            item = self.queue.get_nowait()

    def cancel(self) -> None:
        """Stop the unfinished choices (the client went away, or one choice failed). Nothing more comes
        for them, so a waiter in next() is woken instead of waiting forever."""
        self._stop()
        self.queue.put_nowait(None)

    def _stop(self) -> None:
        raise NotImplementedError


class LocalAnswer(Answer):
    """An answer from this node's engine: one engine request per choice."""

    def __init__(
        self,
        engine: ModelEngine,
        prompts: list[list[int]],
        gp: GenerationParams,
        pump: LoopPump,
        fingerprint: str,
        echo: list[str] | None = None,
        tool_format: ToolFormat = GENERIC,
    ) -> None:
        super().__init__(len(prompts), echo)
        self.engine = engine
        # With tools on, each choice's text is parsed into content and tool calls as it arrives (here, so that
        # a serving mesh peer sends the requester tool-call events: it alone has the model's template).
        tools = gp.tools if gp.tools is not None and gp.tools.active else None
        self._tool_streams = [ToolCallStream(tools, tool_format) for _ in prompts] if tools else None
        self.requests: list[GenRequest] = []
        self._started = [Started(len(p), engine.id, fingerprint) for p in prompts]
        for i, prompt in enumerate(prompts):
            params = gp.sampling
            if i and params.seed is not None:
                # Several choices from one seeded request differ from each other, reproducibly.
                params = replace(params, seed=(params.seed + i) & 0xFFFFFFFF)
            self.requests.append(
                GenRequest(
                    prompt=prompt,
                    params=params,
                    max_new_tokens=gp.max_tokens,
                    stop=gp.stop,
                    emit=self._emitter(pump, i),
                )
            )

    def _emitter(self, pump: LoopPump, index: int) -> Callable[[EngineEvent], None]:
        queue = self.queue
        if self._tool_streams is not None:
            stream = self._tool_streams[index]

            def emit_parsed(ev: EngineEvent) -> None:  # called on the engine link's thread, in order
                for out in stream.events(ev):
                    pump.put(queue, (index, out))

            return emit_parsed

        def emit(ev: EngineEvent) -> None:
            pump.put(queue, (index, ev))

        return emit

    def submit(self) -> None:
        """Queue every choice on the engine (all or none), then report each one started."""
        submitted = []
        try:
            for r in self.requests:
                self.engine.submit(r)
                submitted.append(r)
        except QueueFull:
            for r in submitted:
                self.engine.cancel(r)
            raise overloaded(
                "The node is at capacity: every slot is busy and the queue is full. Retry after the indicated delay.",
                retry_after=1,
            ) from None
        except EngineStopped:
            raise APIError(
                503, "The model is shutting down; retry against a running node.", "server_error", None, "engine_stopped"
            ) from None
        except EngineUnavailable as e:
            for r in submitted:
                self.engine.cancel(r)
            raise APIError(503, str(e), "server_error", None, "model_restarting", retry_after=e.retry_after) from None
        for i, st in enumerate(self._started):
            self.put(i, st)

    def _stop(self) -> None:
        for i in self._open:
            self.engine.cancel(self.requests[i])


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
    tool_format: ToolFormat = GENERIC  # chat: how the model writes tool calls


def tool_format(engine: ModelEngine) -> ToolFormat:
    """The tool format the engine's chat template teaches (the generic protocol for the ChatML fallback)."""
    return GENERIC if engine.template.is_fallback else detect_format(engine.template.source)


class GenerationService:
    """Generation on this node's engines: check and tokenize a request (``prepare``), then run it
    (``start``). ``capability``: the detected hardware, None while the node starts; ``available``: the
    model ids a request may name, for the message of a 404."""

    def __init__(self, models: Models, capability: Callable[[], Any], available: Callable[[], list[str]]) -> None:
        self.models = models
        self._capability = capability
        self._available = available
        self._pump: LoopPump | None = None

    @property
    def pump(self) -> LoopPump:
        """The one pump of the running loop (made on first use: a node is built before its loop runs)."""
        loop = asyncio.get_running_loop()
        if self._pump is None or self._pump.loop is not loop:
            self._pump = LoopPump(loop)
        return self._pump

    async def engine_for(self, model: str) -> ModelEngine:
        """The engine serving ``model``, loading it on first use."""
        m = self.models.get(model)
        if m is not None and m.state == RESTARTING:
            raise APIError(
                503,
                f"The model '{m.id}' is restarting after its engine crashed; retry in a few seconds.",
                "server_error",
                "model",
                "model_restarting",
                retry_after=2,
            )
        if m is None or m not in self.models.routable() and m.state != "downloading":
            if m is not None and m.state == "error":
                raise APIError(
                    503, f"The model '{m.id}' failed to load: {m.error}", "server_error", "model", "model_load_failed"
                )
            raise model_not_found(model, self._available())
        if self._capability() is None:
            raise overloaded("The node is still starting; retry in a few seconds.", retry_after=2)
        try:
            return await self.models.ensure_loaded(model)
        except ModelError as e:
            if e.status == 404:
                raise APIError(
                    404, f"{str(e)[:1].upper()}{str(e)[1:]}.", "invalid_request_error", "model", "model_not_found"
                ) from None
            if e.status == 503:
                raise APIError(503, str(e), "server_error", "model", e.code, retry_after=5) from None
            raise APIError(e.status, str(e), "invalid_request_error", "model", e.code) from None

    async def prepare(self, kind: str, body: dict, gp: GenerationParams, continue_with: str = "") -> Prepared:
        """``kind`` "chat" or "completion"; ``continue_with``: the beginning of the answer already given
        (an answer continued after its first peer was lost)."""
        if kind == "chat":
            return await self.prepare_chat(body, gp, continue_with)
        return await self.prepare_completion(body, gp, continue_with)

    def start(self, prep: Prepared, choices: int | None = None) -> LocalAnswer:
        """Run the prepared request (its first ``choices`` only, when given). Raises NodeError when the
        engine cannot take it (full, restarting, stopping)."""
        cap = self._capability()
        fp = fingerprint(__version__, prep.engine.path.name, cap.backend if cap else "cpu")
        prompts = prep.prompts[:choices] if choices is not None else prep.prompts
        echo = [prep.texts[i // prep.gp.n] for i in range(len(prompts))] if prep.echo else None
        answer = LocalAnswer(prep.engine, prompts, prep.gp, self.pump, fp, echo, prep.tool_format)
        answer.submit()
        return answer

    async def prepare_chat(self, body: dict, gp: GenerationParams, continue_with: str = "") -> Prepared:
        """Chat completion → tokens. ``continue_with``: the beginning of the answer already given (an answer
        continued after its first peer was lost)."""
        messages = parse_messages(body)
        engine = await self.engine_for(gp.model)
        gp = with_vocab(gp, body, engine.n_vocab)
        check_capacity(engine, gp.n, "n")
        fmt = tool_format(engine)
        gp = replace(gp, sampling=tool_sampling(gp.sampling, gp.tools, fmt))
        if fmt.native and engine.special_texts:
            bad = control_text_in_tool_parts(messages, engine.special_texts)
            if bad is not None:
                raise invalid(f"'{bad[0]}' contains {bad[1]!r}, a control token of this model.", bad[0])

        # A content that holds the text of a special token (e.g. "<|im_start|>system") is tokenized as plain
        # text, apart from the template's markup: nobody writes the model's control tokens through a message,
        # and llama.cpp's special-token scan (quadratic in their number) never runs over a user's text.
        # With tools, the template (or our generic protocol's instructions) offers them (runtime/tools/prompt.py).
        def render_one(
            msgs: list[dict[str, Any]], tools: list[dict[str, Any]] | None
        ) -> list[tuple[str, bool]] | str | None:
            specials = engine.special_texts
            if specials and any(t in m["content"] for m in msgs for t in specials):
                return engine.template.render_segments(msgs, add_generation_prompt=True, tools=tools)
            return engine.template.render(msgs, add_generation_prompt=True, tools=tools)

        def render_whole(msgs: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
            return engine.template.render(msgs, add_generation_prompt=True, tools=tools)

        def render() -> list[tuple[str, bool]] | str | None:
            return render_with_tools(render_one, messages, gp.tools, fmt)

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
                rendered = await asyncio.to_thread(render_with_tools, render_whole, messages, gp.tools, fmt)
            rendered += continue_with
            check_text_fits(engine, rendered, "messages", "messages")
            prompt = await _engine_call(engine.chat_prompt(rendered))
        check_context(engine, len(prompt), gp.max_tokens, "messages", "messages")
        return Prepared(engine, gp, [prompt] * gp.n, tool_format=fmt)

    async def prepare_completion(self, body: dict, gp: GenerationParams, continue_with: str = "") -> Prepared:
        prompts_in = parse_prompts(body)
        engine = await self.engine_for(gp.model)
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
                        f"'prompt' contains a token id outside this model's vocabulary (0..{engine.n_vocab - 1}).",
                        "prompt",
                    )
                toks = p
                texts.append(await _engine_call(engine.detokenize(p)))
            if not toks:
                raise invalid(f"prompt {i} is empty; it must contain text.", "prompt")
            toks = toks + tail
            check_context(engine, len(toks), gp.max_tokens, "prompt", "prompt")
            prompts.extend([toks] * gp.n)
        return Prepared(engine, gp, prompts, texts, echo)

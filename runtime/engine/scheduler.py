"""Continuous batching over one llama.cpp context.

One thread per loaded model runs the decode loop; requests join and leave the batch at any step.
Each step decodes, in a single ``llama_decode``, the next token of every generating sequence plus a
chunk of the prompt of sequences still reading theirs, so running streams keep flowing while a long
prompt is processed. Sequences reuse the KV cache of the prefix they share with what their slot last
held (same system prompt, a conversation's next turn).

Events go back to the caller through ``GenRequest.emit`` (called from the engine thread; the API layer
hands them to its event loop). Generation never runs on the event loop.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .events import EngineStopped, Failed, Finished, GenRequest, QueueFull, Text
from .llama_model import LlamaContext, LlamaModel
from .sampling import GrammarError, Sampler, token_logprob
from .text import IncrementalDecoder, StopMatcher

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Slot:
    seq: int
    kv: list[int] = field(default_factory=list)  # tokens whose K/V are in this sequence's cache
    req: GenRequest | None = None
    sampler: Sampler | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    last_token: int | None = None  # sampled, to be decoded in the next step
    generated: int = 0
    cached: int = 0
    first_token_at: float | None = None
    decoder: IncrementalDecoder | None = None
    stopper: StopMatcher | None = None
    logprobs: LogprobQueue | None = None  # only for requests that ask for log probabilities
    last_used: float = 0.0


class LogprobQueue:
    """Pairs each sampled token's log probability with the text event that releases its text.

    The text of a token can be held back (part of a UTF-8 character, or the start of a possible stop
    string), so an event carries the entries of the tokens whose bytes it completes. When a stop string
    ends the answer, tokens whose bytes all belong to the stop string (never shown) are dropped."""

    def __init__(self) -> None:
        self._entries: list[tuple[int, dict]] = []  # (end offset in sampled bytes, entry)
        self._sampled = 0  # bytes of every sampled token so far
        self._released = 0  # bytes of text released in events so far

    def add(self, entry: dict) -> None:
        self._sampled += len(entry["bytes"])
        self._entries.append((self._sampled, entry))

    def release(self, text: str) -> list[dict]:
        """The entries for an event releasing ``text``: every token whose bytes end within it."""
        self._released += len(text.encode("utf-8", "surrogatepass"))
        n = 0
        while n < len(self._entries) and self._entries[n][0] <= self._released:
            n += 1
        taken, self._entries = self._entries[:n], self._entries[n:]
        return [e for _, e in taken]

    def rest(self, stopped: bool) -> list[dict]:
        """At the end: the entries not yet released; after a stop string, only tokens that began before
        it (whose text was at least partly shown)."""
        if stopped:
            out, start = [], self._released
            for end, e in self._entries:
                if end - len(e["bytes"]) < start:
                    out.append(e)
            self._entries = []
            return out
        out = [e for _, e in self._entries]
        self._entries = []
        return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Scheduler:
    def __init__(
        self,
        model: LlamaModel,
        ctx: LlamaContext,
        max_queue: int,
        prompt_chunk: int = 256,
        on_finished: Callable[[Finished], None] | None = None,
        on_step: Callable[[], None] | None = None,
        on_crash: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.model = model
        self.ctx = ctx
        self.n_ctx_seq = ctx.n_ctx_seq
        self.max_queue = max_queue
        self.prompt_chunk = min(prompt_chunk, ctx.n_batch)
        self.on_finished = on_finished
        # on_step: after every loop iteration (the worker sends the events of the step in one message);
        # on_crash: the loop died of a bug (the worker exits and its supervisor restarts it).
        self.on_step = on_step or (lambda: None)
        self.on_crash = on_crash
        self.slots = [_Slot(seq=i) for i in range(ctx.n_seq)]
        self._waiting: collections.deque[GenRequest] = collections.deque()
        # Other llama.cpp work (the load probe, embeddings) run by this thread between steps: see call().
        self._jobs: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        # Where the engine thread's time goes: llama_decode vs the whole step (Python overhead = the rest).
        self.steps = 0
        self.decode_seconds = 0.0
        self.step_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name=f"engine-{model.path.name}", daemon=True)
        self._thread.start()

    # -- public, thread-safe -----------------------------------------------------------------------

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    def submit(self, req: GenRequest) -> None:
        with self._cv:
            if self._stopping:
                raise EngineStopped()
            if len(self._waiting) >= self.max_queue and not self._free_slot_exists():
                raise QueueFull()
            self._waiting.append(req)
            self._cv.notify()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the engine thread between two steps; its result or exception in the Future.

        Every llama.cpp computation of a process belongs on this one thread: llama.cpp's OpenMP build keeps
        a pool of threads per calling thread, and once a process has more pooled threads than cores, the
        pools stop spinning between the parallel regions of a decode and sleep in the kernel instead —
        measured here, a probe decode on another thread made every later decode step 20-30% slower."""
        fut: Future = Future()
        with self._cv:
            if self._stopping:
                raise EngineStopped()
            self._jobs.append((fn, fut))
            self._cv.notify()
        return fut

    def wake(self) -> None:
        """Called after a cancel so an idle loop notices it at once."""
        with self._cv:
            self._cv.notify()

    def counts(self) -> dict:
        with self._cv:
            active = sum(1 for s in self.slots if s.req is not None)
            return {
                "in_flight": active,
                "queued": len(self._waiting),
                "slots": len(self.slots),
                "slots_busy": active,
                "steps": self.steps,
                "decode_seconds": round(self.decode_seconds, 4),
                "step_seconds": round(self.step_seconds, 4),
            }

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=30)

    # -- engine thread -------------------------------------------------------------------------------

    def _free_slot_exists(self) -> bool:
        return any(s.req is None for s in self.slots)

    def _run(self) -> None:
        crash: BaseException | None = None
        try:
            while True:
                with self._cv:
                    while (
                        not self._stopping
                        and not self._waiting
                        and not self._jobs
                        and not any(s.req for s in self.slots)
                    ):
                        self._cv.wait()
                    if self._stopping:
                        break
                    jobs, self._jobs = list(self._jobs), collections.deque()
                    self._admit_locked()
                for fn, fut in jobs:
                    if fut.set_running_or_notify_cancel():
                        try:
                            fut.set_result(fn())
                        except Exception as e:  # the caller's error, not the loop's
                            fut.set_exception(e)
                if not any(s.req for s in self.slots):
                    self.on_step()  # send what admission emitted (a request refused by its sampler)
                    continue
                t0 = time.perf_counter()
                self._drop_cancelled()
                self._step()
                self.step_seconds += time.perf_counter() - t0
                self.steps += 1
                self.on_step()
        except Exception as e:  # a bug here must not leave clients waiting forever
            log.exception("engine loop crashed")
            crash = e
            # What ran in the slots may be what broke the loop: those requests are not retried.
            for s in self.slots:
                if s.req:
                    self._finish_error(
                        s,
                        "the engine failed while generating this answer; the request is not "
                        "retried (it may be what broke it)",
                        "engine_crashed",
                    )
        finally:
            with self._cv:
                self._stopping = True
                waiting, self._waiting = list(self._waiting), collections.deque()
                jobs, self._jobs = list(self._jobs), collections.deque()
            for _, fut in jobs:
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(EngineStopped())
            why = (
                "the model's engine stopped after an internal error; retry in a few seconds"
                if crash is not None
                else "the node is shutting down; retry against a running node"
            )
            for r in waiting:
                r.emit(Failed(why, "engine_stopped"))
            for s in self.slots:
                if s.req:
                    self._finish_error(s, why, "engine_stopped")
            self.on_step()
            if crash is not None and self.on_crash is not None:
                self.on_crash(crash)

    def _admit_locked(self) -> None:
        while self._waiting:
            free = [s for s in self.slots if s.req is None]
            if not free:
                return
            req = self._waiting.popleft()
            if req.cancelled:
                continue
            # Prefer the slot whose cache shares the longest prefix; then the least recently used.
            best = max(free, key=lambda s: (_common_prefix(s.kv, req.prompt), -s.last_used))
            keep = min(_common_prefix(best.kv, req.prompt), len(req.prompt) - 1)
            self.ctx.seq_remove(best.seq, keep, -1)
            del best.kv[keep:]
            try:
                best.sampler = Sampler(req.params, self.model.vocab, self.model.n_vocab)
            except GrammarError as e:
                req.emit(Failed(str(e), "invalid_grammar"))
                continue
            except Exception as e:  # a sampler that cannot be built fails its request, not the engine
                log.exception("could not build the sampler of a request")
                req.emit(Failed(f"the sampling parameters could not be applied by llama.cpp: {e}", "engine_error"))
                continue
            best.req = req
            best.pending = list(req.prompt[keep:])
            best.cached = keep
            best.last_token = None
            best.generated = 0
            best.first_token_at = None
            best.decoder = IncrementalDecoder()
            best.stopper = StopMatcher(req.stop)
            best.logprobs = LogprobQueue() if req.params.logprobs is not None else None

    def _drop_cancelled(self) -> None:
        for s in self.slots:
            if s.req is not None and s.req.cancelled:
                # The client is gone: free the slot and release its KV cache now.
                self.ctx.seq_remove(s.seq)
                s.kv.clear()
                self._release(s)

    def _step(self) -> None:
        entries: list[tuple[int, int, int, bool]] = []
        samplers: list[tuple[_Slot, int]] = []
        for s in self.slots:
            if s.req is not None and s.last_token is not None:
                pos = len(s.kv)
                entries.append((s.last_token, pos, s.seq, True))
                s.kv.append(s.last_token)
                s.last_token = None
                samplers.append((s, len(entries) - 1))
        # Prompt tokens per step are capped so one step stays short: running streams keep flowing and
        # a cancelled request is dropped within one step.
        budget = min(self.ctx.n_batch - len(entries), self.prompt_chunk)
        for s in self.slots:
            if budget <= 0:
                break
            if s.req is None or not s.pending:
                continue
            take = s.pending[:budget]
            del s.pending[: len(take)]
            budget -= len(take)
            base = len(s.kv)
            last = not s.pending
            for i, t in enumerate(take):
                entries.append((t, base + i, s.seq, last and i == len(take) - 1))
            s.kv.extend(take)
            if last:
                samplers.append((s, len(entries) - 1))
        if not entries:
            return
        t0 = time.perf_counter()
        rc = self.ctx.decode(entries)
        self.decode_seconds += time.perf_counter() - t0
        if rc != 0:
            msg = f"llama.cpp decode failed (code {rc})"
            log.error(msg)
            for s in self.slots:
                if s.req is not None:
                    self.ctx.seq_remove(s.seq)
                    s.kv.clear()
                    self._finish_error(s, msg + "; retry the request")
            return
        now = time.perf_counter()
        for s, idx in samplers:
            if s.req is None:
                continue
            # set together with req when the slot took its request
            assert s.sampler is not None and s.stopper is not None and s.decoder is not None
            try:
                token = s.sampler.sample(self.ctx.ctx, idx)
            except GrammarError as e:  # the grammar allows no token here: this request fails, not the loop
                self.ctx.seq_remove(s.seq)
                s.kv.clear()
                self._finish_error(s, str(e), "invalid_grammar")
                continue
            if s.first_token_at is None:
                s.first_token_at = now
            if self.model.is_eog(token):
                self._finish(s, "stop")
                continue
            s.generated += 1
            lpq = s.logprobs
            if lpq is not None:
                top_n = s.req.params.logprobs or 0
                lpq.add(token_logprob(self.ctx.ctx, idx, self.model.n_vocab, token, top_n, self.model.token_bytes))
            text = s.stopper.feed(s.decoder.feed(self.model.token_bytes(token, s.req.params.special_text)))
            if text:
                s.req.emit(Text(text, logprobs=lpq.release(text) if lpq is not None else None))
            if s.stopper.stopped:
                self._finish(s, "stop")
                continue
            if s.req.max_new_tokens is not None and s.generated >= s.req.max_new_tokens:
                self._finish(s, "length")
                continue
            if len(s.kv) + 1 >= self.n_ctx_seq:
                self._finish(s, "length")  # the slot's context is full
                continue
            s.last_token = token

    def _finish(self, s: _Slot, reason: str) -> None:
        req = s.req
        assert req is not None and s.stopper is not None and s.decoder is not None
        lpq = s.logprobs
        if reason != "stop" or not s.stopper.stopped:
            tail = s.stopper.feed(s.decoder.flush())
            tail += s.stopper.flush()
            rest = lpq.rest(stopped=False) if lpq is not None else None
            if tail or rest:
                req.emit(Text(tail, logprobs=rest))
        elif lpq is not None:
            rest = lpq.rest(stopped=True)
            if rest:
                req.emit(Text("", logprobs=rest))
        end = time.perf_counter()
        first = s.first_token_at or end
        tps = (s.generated - 1) / (end - first) if s.generated > 1 and end > first else None
        ev = Finished(
            finish_reason=reason,
            prompt_tokens=len(req.prompt),
            completion_tokens=s.generated,
            cached_tokens=s.cached,
            ttft_ms=(first - req.submitted_at) * 1000.0,
            tokens_per_second=tps,
        )
        req.emit(ev)
        if self.on_finished:
            self.on_finished(ev)
        self._release(s)

    def _finish_error(self, s: _Slot, message: str, code: str = "engine_error") -> None:
        if s.req is not None:
            s.req.emit(Failed(message, code))
        self._release(s)

    def _release(self, s: _Slot) -> None:
        if s.sampler:
            s.sampler.close()
        s.sampler = None
        s.logprobs = None
        s.req = None
        s.pending = []
        s.last_token = None
        s.last_used = time.monotonic()
        with self._cv:
            self._cv.notify()

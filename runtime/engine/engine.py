"""One served model as the node sees it: a supervised engine worker process.

The engine (llama.cpp: weights, the batching loop, sampling, the tokenizer, embeddings) runs in a worker
process (worker.py). This object, in the node's process, starts it, talks to it, and keeps the node's
promises when it dies:

- a crash (abort, segfault, illegal instruction, or a bug in the loop) ends the requests running on that
  model with an ``engine_crashed`` error — never a hang — and nothing else: the node, its HTTP server,
  its other models and its mesh membership go on;
- the worker restarts with backoff, at most ``MAX_CRASHES`` times within ``CRASH_WINDOW`` seconds; after
  that the model is given up on and shows ``error`` with the reason until it is loaded again;
- the state changes (``restarting``, ``ready``, ``failed``) are reported through ``on_state`` so the
  model manager shows them, /health tells the truth and the mesh withdraws the model while it is down;
- the first start of each build of llama.cpp on this machine is a probe (runtime/engine/probe.py): a
  worker that dies of SIGILL/SIGBUS while loading and running its first decode marks that build unusable
  here; the next variant is tried when the bundle has one, and the build is not retried.

The node's own process never imports llama.cpp.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..hardware import Capability
from ..stats import RequestSample, RollingStats
from . import worker
from .cores import CoreShare
from .events import (
    EngineConfig,
    EngineStopped,
    EngineUnavailable,
    Failed,
    Finished,
    GenRequest,
    QueueFull,
    is_final,
)
from .probe import BuildRegistry, describe_exit, is_build_fault
from .templates import ChatTemplate
from .variants import LibraryVariant, candidates

log = logging.getLogger(__name__)

MAX_CRASHES = 3  # restarts allowed within CRASH_WINDOW; one more crash and the model shows "error"
CRASH_WINDOW = 60.0
RESTART_BACKOFF = (0.25, 1.0, 3.0)  # seconds before the 1st, 2nd, 3rd restart within the window
STOP_TIMEOUT = 30.0
HOP_SAMPLES = 256  # requests whose worker hop time makes up hop_ms()


class EngineLoadError(RuntimeError):
    """The model could not be loaded (llama.cpp refused it, or every build of llama.cpp crashed)."""


class EmbeddingsUnsupported(Exception):
    pass


class ModelEngine:
    """Blocking constructor (run it in a thread): returns once a worker has loaded and probed the model."""

    def __init__(
        self,
        model_id: str,
        path: Path,
        cap: Capability,
        cfg: EngineConfig,
        on_state: Callable[[str, str | None], None] | None = None,
        builds: BuildRegistry | None = None,
        variants: list[LibraryVariant] | None = None,
        share: CoreShare | None = None,
    ) -> None:
        self.id = model_id
        # The node's threads, shared with its other engines while several generate at once (cores.py).
        self.share = share
        self.path = path
        self.cap = cap
        self.cfg = cfg
        self.stats = RollingStats()
        self.on_state = on_state or (lambda state, reason: None)
        self.builds = builds
        self.state = "starting"  # ready | restarting | failed | closed
        self.last_error: str | None = None
        self.restarts = 0
        self._lock = threading.Lock()
        self._reqs: dict[int, GenRequest] = {}
        # The worker hop's own cost, timed per request (hop_ms): when the request was handed to the pipe.
        self._sent_at: dict[int, float] = {}
        self._hops: collections.deque[float] = collections.deque(maxlen=HOP_SAMPLES)
        self._calls: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._ids = itertools.count(1)
        self._crashes: collections.deque[float] = collections.deque()
        self._closing = False
        self._conn: worker.Channel | None = None
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._worker_steps = (0, 0.0, 0.0)
        self._last_heard = time.monotonic()  # the last message from the worker (or work handed to an idle one)
        self._call_started: dict[int, float] = {}
        self._stalled: str | None = None  # why the watchdog stopped the worker, for _worker_died
        self._closed = threading.Event()  # wakes the stall watchdog at close
        self._watch: threading.Thread | None = None
        self.skipped_variants: dict[str, str] = {}
        self.variant, desc = self._start_first(variants if variants is not None else candidates())
        self._describe(desc)
        self._watch = threading.Thread(target=self._watch_stalls, name=f"engine-watch[{self.id}]", daemon=True)
        self._watch.start()
        info, off = self.info, self.offload
        assert self._proc is not None  # _start_first started one or raised
        log.info(
            "loaded %s (%s, %s): %d slots × %d tokens context (KV %.0f MiB), %d/%d layers on GPU (%s), "
            "%d threads; engine process %d, llama.cpp build %s%s",
            model_id,
            path.name,
            info.description,
            self.n_slots,
            self.n_ctx_seq,
            self.kv_cache_bytes / 2**20,
            off.gpu_layers,
            off.total_layers,
            off.reason,
            cfg.threads,
            self._proc.pid,
            self.variant.name,
            "; no chat template in the GGUF, using ChatML" if self.template.is_fallback else "",
        )

    # -- starting workers ---------------------------------------------------------------------------

    def _spawn(self, variant: LibraryVariant) -> tuple[str, Any]:
        """Start a worker with ``variant`` and wait for its first word: ("ready", description),
        ("load_failed", message) or ("died", exit code)."""
        env = worker.worker_env(dict(os.environ), variant.env())
        proc = subprocess.Popen(
            worker.worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True
        )
        assert proc.stdin is not None and proc.stdout is not None
        conn = worker.Channel(proc.stdout, proc.stdin)
        spec = worker.WorkerSpec(
            self.id,
            self.path,
            self.cap,
            self.cfg,
            str(variant.lib_dir) if variant.lib_dir is not None else None,
            logging.getLogger().getEffectiveLevel(),
        )
        try:
            conn.send(spec)
            kind, payload = conn.recv()
        except (EOFError, OSError):
            conn.close()
            return "died", _wait(proc, 10)
        if kind != "ready":
            conn.close()
            _wait(proc, 10)
            return kind, payload
        self._conn, self._proc = conn, proc
        return "ready", payload

    def _start_first(self, variants: list[LibraryVariant]) -> tuple[LibraryVariant, dict]:
        """Try the builds best first; a build that dies of an illegal instruction is recorded and skipped."""
        faults: list[str] = []
        for v in variants:
            known = self.builds.fault(v) if self.builds else None
            if known:
                self.skipped_variants[v.name] = known
                faults.append(f"{v.name}: {known}")
                continue
            kind, payload = self._spawn(v)
            if kind == "ready":
                if faults:
                    log.warning("llama.cpp build %s in use for %s (skipped: %s)", v.name, self.id, "; ".join(faults))
                return v, payload
            if kind == "load_failed":
                raise EngineLoadError(payload)
            reason = describe_exit(payload)
            if is_build_fault(payload):
                log.error(
                    "the llama.cpp build %s died while loading %s (%s): this build cannot run on this "
                    "processor; it will not be used again",
                    v.name,
                    self.id,
                    reason,
                )
                if self.builds:
                    self.builds.record_fault(v, reason)
                self.skipped_variants[v.name] = reason
                faults.append(f"{v.name}: {reason}")
                continue
            raise EngineLoadError(f"the engine process crashed while loading the model ({reason})")
        raise EngineLoadError(
            "llama.cpp cannot run on this computer's processor: every build of it that this installation has "
            f"crashed while loading the model ({'; '.join(faults)}). Install a build made for this processor "
            "(from source: delete ~/.cache/closedmesh/llama-wheels and run the install again), or report this "
            "with your processor's model."
        )

    def _describe(self, desc: dict) -> None:
        self.info = desc["info"]
        self.n_ctx_seq: int = desc["n_ctx_seq"]
        self.max_token_bytes: int = max(1, desc["max_token_bytes"])
        self.special_texts: list[str] = desc["special_texts"]
        self.n_slots: int = desc["slots"]
        self.batch_size: int = desc["batch_size"]
        self.kv_cache_bytes: int = desc["kv_cache_bytes"]
        self.offload = desc["offload"]
        self.n_vocab: int = self.info.n_vocab
        self.template = ChatTemplate.for_model(self.info.chat_template, self.info.bos_text, self.info.eos_text)
        self.state = "ready"
        self.started_at = time.monotonic()
        assert self._conn is not None and self._proc is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._conn, self._proc), name=f"engine-link[{self.id}]", daemon=True
        )
        self._reader.start()

    # -- the link to the worker ---------------------------------------------------------------------

    def _read(self, conn: worker.Channel, proc: subprocess.Popen) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            self._last_heard = time.monotonic()
            op = msg[0]
            if op == "ev":
                _, items, steps, dsec, ssec, firsts = msg
                self._worker_steps = (steps, dsec, ssec)
                if firsts:
                    arrived = time.perf_counter()
                    with self._lock:
                        for rid, (received, emitted) in firsts.items():
                            sent = self._sent_at.pop(rid, None)
                            if sent is not None:
                                self._hops.append(((received - sent) + (arrived - emitted)) * 1000.0)
                for rid, ev in items:
                    with self._lock:
                        if is_final(ev):
                            req = self._reqs.pop(rid, None)
                            self._sent_at.pop(rid, None)
                            self._idle_locked()
                        else:
                            req = self._reqs.get(rid)
                    if req is None:
                        continue  # cancelled here already
                    if isinstance(ev, Finished):
                        self.stats.add(RequestSample(ev.tokens_per_second, ev.ttft_ms))
                    req.emit(ev)
            elif op == "ret":
                _, cid, ok, value = msg
                with self._lock:
                    waiter = self._calls.pop(cid, None)
                    self._call_started.pop(cid, None)
                if waiter is not None:
                    _resolve(waiter, ok, value)
        conn.close()
        self._worker_died(_wait(proc, 10 if self._closing else 5))

    def _send(self, msg: tuple) -> None:
        conn = self._conn
        if conn is None or self.state != "ready":
            raise EngineUnavailable(self._unavailable_message(), 2 if self.state == "restarting" else None)
        try:
            conn.send(msg)
        except (OSError, ValueError):
            raise EngineUnavailable(self._unavailable_message(), 2) from None

    def _unavailable_message(self) -> str:
        if self.state == "restarting":
            return (
                f"The model '{self.id}' is restarting after its engine crashed ({self.last_error}); retry in a "
                f"few seconds."
            )
        if self.state == "closed":
            return f"The model '{self.id}' is shutting down; retry against a running node."
        return f"The model '{self.id}' is not available: {self.last_error}"

    # -- crashes, stalls and restarts ------------------------------------------------------------------

    def _watch_stalls(self) -> None:
        """Native code can hang as well as crash (a deadlock, a pathological grammar): a worker that has
        work and sends nothing for ``cfg.stall_timeout`` seconds (its loop reports every second while it
        runs), or leaves a call unanswered that long, is killed and goes through the crash path — its
        requests end with an error instead of waiting forever, and /health says the model is restarting."""
        interval = min(1.0, self.cfg.stall_timeout / 4)
        while not self._closed.wait(interval) and self.state != "failed":
            if self.state != "ready":
                continue
            now = time.monotonic()
            with self._lock:
                proc, n_reqs = self._proc, len(self._reqs)
                oldest_call = min(self._call_started.values(), default=now)
            silent = now - self._last_heard if n_reqs else 0.0
            waited = now - oldest_call
            if proc is None or max(silent, waited) < self.cfg.stall_timeout:
                continue
            if n_reqs and silent >= self.cfg.stall_timeout:
                what = f"made no progress for {silent:.0f} s with {n_reqs} request(s) running"
            else:
                what = f"left a call unanswered for {waited:.0f} s"
            self._stalled = f"its engine process {what} (hung) and was stopped"
            log.error("the engine of %s %s; stopping it (pid %d)", self.id, what, proc.pid)
            proc.kill()
            self._last_heard = now  # once per stall: the reader sees the exit and restarts it

    def _worker_died(self, exitcode: int | None) -> None:
        stalled, self._stalled = self._stalled, None
        reason = stalled or describe_exit(exitcode)
        with self._lock:
            reqs, self._reqs = list(self._reqs.values()), {}
            self._sent_at.clear()
            calls, self._calls = list(self._calls.values()), {}
            self._call_started.clear()
            self._conn = None
            if self.share is not None:
                self.share.forget(self)  # its requests are over; a new worker starts with every thread
            if not self._closing:
                self.last_error = stalled or f"its engine process crashed: {reason}"
                self.state = "restarting"  # from here on, new requests get "restarting", not a broken pipe
        if self._closing:
            for r in reqs:
                r.emit(Failed("the node is shutting down; retry against a running node", "engine_stopped"))
            for waiter in calls:
                _resolve(waiter, False, ("stopped", "the model is shutting down", ()))
            self.state = "closed"
            return
        log.error("the engine of %s crashed (%s) with %d request(s) running; restarting it", self.id, reason, len(reqs))
        what, cause = ("stopped responding", "hung") if stalled else ("crashed", "crashed")
        for r in reqs:
            r.emit(
                Failed(
                    f"The model's engine {what} while this request was running ({reason}). The request is "
                    f"not retried: it may be what {cause} it. The engine restarts by itself.",
                    "engine_crashed",
                )
            )
        for waiter in calls:
            _resolve(waiter, False, ("crashed", f"the model's engine crashed ({reason})", ()))
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > CRASH_WINDOW:
            self._crashes.popleft()
        if len(self._crashes) > MAX_CRASHES:
            self._give_up(
                f"its engine crashed {len(self._crashes)} times within {CRASH_WINDOW:.0f} s (last: "
                f"{reason}); it was stopped. Load it again to retry."
            )
            return
        self.state = "restarting"
        self.on_state("restarting", self.last_error)
        time.sleep(RESTART_BACKOFF[min(len(self._crashes), len(RESTART_BACKOFF)) - 1])
        if self._closing:
            self.state = "closed"
            return
        kind, payload = self._spawn(self.variant)
        if kind == "ready" and self._closing:  # closed while the new worker started: stop it too
            assert self._conn is not None and self._proc is not None
            self._conn.send(("stop",))
            _wait(self._proc, STOP_TIMEOUT)
            self.state = "closed"
            return
        if kind == "ready":
            self.restarts += 1
            self._describe(payload)
            log.info("the engine of %s is back (restart %d)", self.id, self.restarts)
            self.on_state("ready", None)
            return
        if kind == "load_failed":
            self._give_up(f"it could not be loaded again after its engine crashed: {payload}")
        else:
            self._worker_died(payload)

    def _give_up(self, message: str) -> None:
        self.state = "failed"
        self.last_error = message
        log.error("model %s: %s", self.id, message)
        self.on_state("failed", message)

    # -- requests ---------------------------------------------------------------------------------------

    @property
    def threads(self) -> int:
        """The decode threads the worker was last told to use (fewer while other engines generate too)."""
        given = self.share.given(self) if self.share is not None else None
        return given if given is not None else self.cfg.threads

    async def n_threads(self) -> int:
        """The decode threads the worker's context is using, as llama.cpp reports them."""
        return await self._call("n_threads")

    def counts(self) -> dict:
        with self._lock:
            total = len(self._reqs)
        steps, dsec, ssec = self._worker_steps
        busy = min(total, self.n_slots)
        return {
            "in_flight": busy,
            "queued": total - busy,
            "slots": self.n_slots,
            "slots_busy": busy,
            "steps": steps,
            "decode_seconds": round(dsec, 4),
            "step_seconds": round(ssec, 4),
        }

    def submit(self, req: GenRequest) -> None:
        """Hand a request to the worker. Raises QueueFull when every slot and the queue are taken,
        EngineUnavailable while the worker is down, EngineStopped when closing."""
        if self._closing:
            raise EngineStopped()
        with self._lock:
            if len(self._reqs) >= self.n_slots + self.cfg.max_queue:
                raise QueueFull()
            req.rid = next(self._ids)
            if not self._reqs:
                self._last_heard = time.monotonic()  # silence while idle is not a stall
                if self.share is not None:
                    self.share.busy(self, self.cfg.threads, self._set_threads)
            self._reqs[req.rid] = req
            self._sent_at[req.rid] = time.perf_counter()
        try:
            self._send(("gen", req.rid, req.prompt, req.params, req.max_new_tokens, req.stop))
        except EngineUnavailable:
            with self._lock:
                self._reqs.pop(req.rid, None)
                self._sent_at.pop(req.rid, None)
                self._idle_locked()
            raise

    def _idle_locked(self) -> None:
        """Called with ``_lock`` held: nothing left to generate, so the other engines share the threads."""
        if not self._reqs and self.share is not None:
            self.share.idle(self)

    def _set_threads(self, n: int) -> None:
        """Tell the worker how many decode threads to use from its next step (CoreShare's ``apply``)."""
        try:
            self._send(("threads", n))
        except EngineUnavailable:
            pass  # the worker is gone; a new one starts with all of them (forget, in _worker_died)

    def hop_ms(self) -> float | None:
        """Median over the last HOP_SAMPLES requests of the time the worker hop added to the time to first
        token: node → worker (pickling, the pipe, the worker picking the request up) plus first event →
        node (waiting for the end of the step, pickling, the pipe). None before the first request."""
        with self._lock:
            hops = list(self._hops)
        return statistics.median(hops) if hops else None

    def cancel(self, req: GenRequest) -> None:
        req.cancel()
        with self._lock:
            live = self._reqs.pop(req.rid, None) is not None
            self._sent_at.pop(req.rid, None)
            self._idle_locked()
        if live:
            try:
                self._send(("cancel", req.rid))
            except EngineUnavailable:
                pass  # the worker is gone, and the request with it

    async def _call(self, name: str, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        cid = next(self._ids)
        with self._lock:
            self._calls[cid] = (loop, fut)
            self._call_started[cid] = time.monotonic()
        try:
            self._send(("call", cid, name, args))
        except EngineUnavailable:
            with self._lock:
                self._calls.pop(cid, None)
                self._call_started.pop(cid, None)
            raise
        return await fut

    async def chat_prompt(self, rendered: str) -> list[int]:
        return await self._call("tokenize_rendered", rendered)

    async def chat_prompt_segments(self, segments: list[tuple[str, bool]]) -> list[int]:
        return await self._call("tokenize_segments", segments)

    async def completion_prompt(self, text: str) -> list[int]:
        return await self._call("completion_prompt", text)

    async def continuation_tokens(self, text: str) -> list[int]:
        return await self._call("continuation_tokens", text) if text else []

    async def detokenize(self, tokens: list[int]) -> str:
        return await self._call("detokenize", tokens)

    async def embed(self, item: str | list[int]) -> tuple[list[float], int]:
        return await self._call("embed", item)

    # -- status / lifecycle ---------------------------------------------------------------------------

    def status(self) -> dict:
        c = self.counts()
        info = self.info
        return {
            "id": self.id,
            "file": str(self.path),
            "context_length": self.n_ctx_seq,
            "context_length_trained": info.n_ctx_train,
            "slots": c["slots"],
            "slots_busy": c["slots_busy"],
            "in_flight": c["in_flight"],
            "queued": c["queued"],
            "batch_size": self.batch_size,
            "engine_steps": c["steps"],
            "engine_decode_seconds": c["decode_seconds"],
            "engine_step_seconds": c["step_seconds"],
            "engine_hop_ms_p50": None if (hop := self.hop_ms()) is None else round(hop, 3),
            "threads": self.threads,
            "kv_cache_bytes": self.kv_cache_bytes,
            "kv_cache_type": self.cfg.kv_type,
            "gpu_layers": self.offload.gpu_layers,
            "layers": self.offload.total_layers,
            "parameters": info.n_params,
            "size_bytes": info.size_bytes,
            "architecture": info.architecture,
            "chat_template": "fallback-chatml" if self.template.is_fallback else "gguf",
            "engine": {
                "state": self.state,
                "pid": self._proc.pid if self._proc is not None else None,
                "restarts": self.restarts,
                "last_error": self.last_error,
                "llama_build": self.variant.name,
                "skipped_builds": dict(self.skipped_variants),
            },
        }

    def close(self) -> None:
        """Stop the worker (blocking): running requests end with an engine_stopped error."""
        self._closing = True
        self._closed.set()
        if self.share is not None:
            self.share.forget(self)
        conn, proc, reader = self._conn, self._proc, self._reader
        if conn is not None:
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
        if proc is not None and _wait(proc, STOP_TIMEOUT) is None:
            log.warning("the engine of %s did not stop within %.0f s; killing it", self.id, STOP_TIMEOUT)
            proc.kill()
            _wait(proc, 5)
        if reader is not None and reader is not threading.current_thread():
            reader.join(STOP_TIMEOUT)
        if self._watch is not None and self._watch is not threading.current_thread():
            self._watch.join(STOP_TIMEOUT)
        self.state = "closed"


def _wait(proc: subprocess.Popen, timeout: float) -> int | None:
    """The worker's exit code (negative: the signal that killed it), or None if it is still running."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def _resolve(waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future], ok: bool, value: Any) -> None:
    loop, fut = waiter

    def settle() -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
            return
        kind, message, args = value
        if kind == "embeddings_unsupported":
            fut.set_exception(EmbeddingsUnsupported(message))
        elif kind == "overflow":
            fut.set_exception(OverflowError(*args))
        elif kind in ("crashed", "stopped"):
            fut.set_exception(EngineUnavailable(message, 2))
        else:
            fut.set_exception(RuntimeError(message))

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:
        pass  # that loop is closed: nobody is waiting

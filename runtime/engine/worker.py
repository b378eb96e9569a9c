"""The engine worker process: one per loaded model, the only process that runs llama.cpp.

llama.cpp can abort (a C++ exception crossing ctypes ends in ``std::terminate``), segfault (a stack
overflow in its grammar code) or die of an illegal instruction (a build the CPU cannot run) on inputs or
machines nobody foresaw. Running it here means such a crash costs the requests running on that model and
nothing else: the node, its HTTP server, its other models and its mesh membership live on, and the
supervisor in engine.py restarts this process.

Protocol over a duplex ``multiprocessing`` pipe (pickled tuples; one message per decode step, not one per
token):

node → worker
    ("gen", rid, prompt, SamplingParams, max_new_tokens, stop)   start a generation
    ("cancel", rid)                                               the client went away
    ("call", cid, name, args)                                     tokenize / detokenize / embed (answered
                                                                  by a "ret")
    ("stop",)                                                     finish and exit
worker → node
    ("ready", description)         loaded and probed (one real decode); description: EngineCore.describe()
    ("load_failed", message)       llama.cpp refused the model (a clean error, not a crash)
    ("ev", [(rid, event), ...], steps, decode_seconds, step_seconds)   the events of one step
    ("ret", cid, ok, value)        value: the result, or (exception kind, message, args)

Nothing in this module imports llama.cpp at import time: the library (and which build of it, through
``LLAMA_CPP_LIB_PATH``) is chosen in ``main`` before the first import.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..hardware import Capability
from .events import EngineConfig, EngineStopped, ErrorEvent, Event, GenRequest, QueueFull, TokenEvent

# A grammar nested deep enough overflows a thread's default stack inside llama.cpp; the engine threads of
# the worker get a large one (the grammar checks refuse such schemas first; this is the second line).
ENGINE_THREAD_STACK = 256 * 1024 * 1024

# Exit code of a worker whose engine loop died of a Python exception (not a native crash).
EXIT_LOOP_CRASHED = 70


@dataclass(frozen=True)
class WorkerSpec:
    model_id: str
    path: Path
    cap: Capability
    cfg: EngineConfig
    lib_dir: str | None  # LLAMA_CPP_LIB_PATH for this worker; None: the installed package's libraries
    log_level: int = logging.INFO


class _Outbox:
    """Events produced during one decode step, sent together at the end of it."""

    def __init__(self, conn: Connection, send_lock: threading.Lock) -> None:
        self.conn = conn
        self.lock = send_lock
        self.items: list[tuple[int, Event]] = []
        self.items_lock = threading.Lock()
        self.core: Any = None

    def add(self, rid: int, ev: Event) -> None:
        with self.items_lock:
            self.items.append((rid, ev))

    def flush(self) -> None:
        with self.items_lock:
            if not self.items:
                return
            items, self.items = self.items, []
        sched = self.core.scheduler if self.core is not None else None
        msg = ("ev", items, sched.steps if sched else 0, sched.decode_seconds if sched else 0.0,
               sched.step_seconds if sched else 0.0)
        with self.lock:
            self.conn.send(msg)


def _serve(conn: Connection, spec: WorkerSpec) -> int:
    from .core import EmbeddingsUnsupported, EngineCore
    from .llama_model import ModelLoadError

    send_lock = threading.Lock()
    outbox = _Outbox(conn, send_lock)

    def on_crash(_: BaseException) -> None:
        # Unblock the recv() below: the node sees this process exit and restarts it.
        os._exit(EXIT_LOOP_CRASHED)

    threading.stack_size(ENGINE_THREAD_STACK)
    try:
        core = EngineCore(spec.model_id, spec.path, spec.cap, spec.cfg, on_step=outbox.flush, on_crash=on_crash)
        core.probe()
    except ModelLoadError as e:
        conn.send(("load_failed", str(e)))
        return 0
    outbox.core = core
    with send_lock:
        conn.send(("ready", core.describe()))

    calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-calls")
    requests: dict[int, GenRequest] = {}

    def do_call(cid: int, name: str, args: tuple) -> None:
        try:
            if name == "tokenize_rendered":
                value: Any = core.tokenize_rendered(*args)
            elif name == "completion_prompt":
                value = core.completion_prompt(*args)
            elif name == "continuation_tokens":
                value = core.continuation_tokens(*args)
            elif name == "detokenize":
                value = core.detokenize(*args)
            elif name == "embed":
                value = core.embed(*args)
            else:
                raise ValueError(f"unknown engine call {name!r}")
            reply = ("ret", cid, True, value)
        except EmbeddingsUnsupported as e:
            reply = ("ret", cid, False, ("embeddings_unsupported", str(e), e.args))
        except OverflowError as e:
            reply = ("ret", cid, False, ("overflow", str(e), e.args))
        except Exception as e:  # a failed call answers its caller; the worker goes on
            reply = ("ret", cid, False, ("error", f"{type(e).__name__}: {e}", ()))
        with send_lock:
            conn.send(reply)

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break  # the node is gone
        op = msg[0]
        if op == "gen":
            _, rid, prompt, params, max_new, stop = msg

            def emit(ev: Event, rid: int = rid) -> None:
                outbox.add(rid, ev)
                if not isinstance(ev, TokenEvent):  # done or failed: the request is over
                    requests.pop(rid, None)

            req = GenRequest(prompt=prompt, params=params, max_new_tokens=max_new, stop=stop, emit=emit, rid=rid)
            requests[rid] = req
            try:
                core.submit(req)
            except QueueFull:
                requests.pop(rid, None)
                outbox.add(rid, ErrorEvent("The node is at capacity: every slot is busy and the queue is full. "
                                           "Retry after the indicated delay.", "overloaded"))
                outbox.flush()
            except EngineStopped:
                requests.pop(rid, None)
                outbox.add(rid, ErrorEvent("the model's engine stopped; retry in a few seconds", "engine_stopped"))
                outbox.flush()
        elif op == "cancel":
            req = requests.pop(msg[1], None)
            if req is not None:
                req.cancel()
                core.scheduler.wake()
        elif op == "call":
            calls.submit(do_call, msg[1], msg[2], msg[3])
        elif op == "stop":
            break
    calls.shutdown(wait=True)
    core.close()
    return 0


def main(conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of the worker process (multiprocessing, "spawn")."""
    if spec.lib_dir is not None:
        os.environ["LLAMA_CPP_LIB_PATH"] = spec.lib_dir
    logging.basicConfig(level=spec.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s engine[{spec.model_id}] %(name)s: %(message)s")
    code = _serve(conn, spec)
    conn.close()
    # os._exit: llama.cpp's and Python's exit handlers have nothing left to do, and skipping them means a
    # wedged native thread cannot hold the process.
    os._exit(code)

"""The engine worker process: one per loaded model, the only process that runs llama.cpp.

llama.cpp can abort (a C++ exception crossing ctypes ends in ``std::terminate``), segfault (a stack
overflow in its grammar code) or die of an illegal instruction (a build the CPU cannot run) on inputs or
machines nobody foresaw. Running it here means such a crash costs the requests running on that model and
nothing else: the node, its HTTP server, its other models and its mesh membership live on, and the
supervisor in engine.py restarts this process.

The worker is a plain child process (``python -m runtime.engine.worker``, or the bundle's executable with
``--closedmesh-engine-worker``) talking over its stdin/stdout: length-prefixed pickled tuples (Channel),
at most one message per decode step, not one per token, and while answers run at most one every
COALESCE_INTERVAL (a request's first and last events go at once). Its stderr is the node's log. The first message is the
WorkerSpec. (Not multiprocessing: its "spawn" re-imports the parent's main module in the child and keeps a
resource-tracker process alive for the parent's lifetime; neither is needed here.)

node → worker
    ("gen", rid, prompt, SamplingParams, max_new_tokens, stop)   start a generation
    ("cancel", rid)                                               the client went away
    ("threads", n)                                                decode with n threads from the next step
                                                                  (the node's other engines generate too:
                                                                  cores.py)
    ("call", cid, name, args)                                     tokenize / detokenize / embed / n_threads
                                                                  (answered by a "ret")
    ("stop",)                                                     finish and exit
worker → node
    ("ready", description)         loaded and probed (one real decode); description: EngineCore.describe()
    ("load_failed", message)       llama.cpp refused the model (a clean error, not a crash)
    ("ev", [(rid, event), ...], steps, decode_seconds, step_seconds, firsts)   the events of one step;
                                   firsts: {rid: (received_at, emitted_at)} for requests whose first event
                                   is in it (perf_counter, the system-wide monotonic clock): the node times
                                   the worker hop with them (ModelEngine.hop_ms)
    ("ret", cid, ok, value)        value: the result, or (exception kind, message, args)

Nothing in this module imports llama.cpp at import time: the library (and which build of it, through
``LLAMA_CPP_LIB_PATH``) is chosen in ``main`` before the first import.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..hardware import Capability
from .events import EngineConfig, EngineEvent, EngineStopped, Failed, GenRequest, QueueFull, is_final

# A grammar nested deep enough overflows a thread's default stack inside llama.cpp; the engine threads of
# the worker get a large one (the grammar checks refuse such schemas first; this is the second line).
ENGINE_THREAD_STACK = 256 * 1024 * 1024

# Exit code of a worker whose engine loop died of a Python exception (not a native crash).
EXIT_LOOP_CRASHED = 70
# While it has work, the loop reports at least this often (seconds), events or not.
PROGRESS_INTERVAL = 1.0
# Events of running answers are sent at most this often (seconds): every message wakes threads in the
# node, which on a machine whose cores are all decoding preempt the decode. A request's first event
# (its time to first token) and its last are sent at once.
COALESCE_INTERVAL = 0.05


# How long a thread of llama.cpp's OpenMP pool (libgomp) spins at a barrier before it sleeps, in spin
# iterations (their duration was not timed here). libgomp's default, 300,000, assumes the process owns its
# cores; with two workers decoding at once on the same cores (a node serving two models, several nodes on
# one machine) a spinning thread keeps its core from the very sibling it waits for, and every decode step
# waits out time slices: measured on 2 cores (bench_worker --together, docs/benchmarks.md), two workers
# together ran at 24.3 tok/s in all (median; two rounds of 0.7), against 46.2 with this bound; one worker
# alone runs as fast either way. A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept.
OMP_SPIN_COUNT = 1000


def worker_env(base: dict[str, str], variant_env: dict[str, str]) -> dict[str, str]:
    """The environment of a worker process: the node's, minus the library choice it does not make, plus
    the build to load (``variant_env``) and a bounded OpenMP spin (OMP_SPIN_COUNT)."""
    env = {k: v for k, v in base.items() if k != "LLAMA_CPP_LIB_PATH"}
    env.update(variant_env)
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env["GOMP_SPINCOUNT"] = str(OMP_SPIN_COUNT)
    return env


# The argument that makes the desktop bundle's executable run a worker (installers/pyinstaller).
FROZEN_WORKER_FLAG = "--closedmesh-engine-worker"

_HEADER = struct.Struct("<I")


class Channel:
    """Length-prefixed pickled messages over two binary streams (a worker's stdin and stdout). Sends are
    serialised by a lock (several threads send); one thread receives. Both ends are our own processes."""

    def __init__(self, rfile: IO[bytes], wfile: IO[bytes]) -> None:
        self.rfile = rfile
        self.wfile = wfile
        self._lock = threading.Lock()

    def send(self, msg: Any) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self.wfile.write(_HEADER.pack(len(data)) + data)
            self.wfile.flush()

    def _read(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.rfile.read(n)
            if not chunk:
                raise EOFError("the other end closed the channel")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def recv(self) -> Any:
        (n,) = _HEADER.unpack(self._read(_HEADER.size))
        return pickle.loads(self._read(n))

    def close(self) -> None:
        for f in (self.rfile, self.wfile):
            try:
                f.close()
            except OSError:
                pass


def worker_command() -> list[str]:
    """How to start a worker: this Python with ``-m``, or the frozen bundle's own executable."""
    if getattr(sys, "frozen", False):
        return [sys.executable, FROZEN_WORKER_FLAG]
    return [sys.executable, "-m", "runtime.engine.worker"]


@dataclass(frozen=True)
class WorkerSpec:
    model_id: str
    path: Path
    cap: Capability
    cfg: EngineConfig
    lib_dir: str | None  # LLAMA_CPP_LIB_PATH for this worker; None: the installed package's libraries
    log_level: int = logging.INFO


class _Outbox:
    """Events produced during one decode step, sent together at the end of it. A step without events
    (reading a long prompt) still sends an empty message once per PROGRESS_INTERVAL: the node's stall
    watchdog (engine.py) takes a loop that says nothing for long while it has work for a hung one."""

    def __init__(self, conn: Channel, send_lock: threading.Lock) -> None:
        self.conn = conn
        self.lock = send_lock
        self.items: list[tuple[int, EngineEvent]] = []
        self.items_lock = threading.Lock()
        self.core: Any = None
        self.last_sent = time.monotonic()
        self.urgent = False  # an item that must not wait (a first or a last event) is pending
        self.started: set[int] = set()  # requests whose first event was sent
        self.firsts: dict[int, tuple[float, float]] = {}  # rid -> (received here, first event emitted)

    def add(self, rid: int, ev: EngineEvent, received_at: float | None = None) -> None:
        with self.items_lock:
            self.items.append((rid, ev))
            if rid not in self.started and received_at is not None:
                self.firsts[rid] = (received_at, time.perf_counter())
            if is_final(ev):
                self.started.discard(rid)
                self.urgent = True
            elif rid not in self.started:
                self.started.add(rid)
                self.urgent = True

    def flush(self) -> None:
        if self.core is None:
            return  # not ready yet (the load probe runs on the engine thread): "ready" is the first message
        with self.items_lock:
            since = time.monotonic() - self.last_sent
            if not self.items and since < PROGRESS_INTERVAL:
                return
            if self.items and not self.urgent and since < COALESCE_INTERVAL:
                return  # sent with a later step's (the loop runs while its requests do)
            items, self.items, self.urgent = self.items, [], False
            firsts, self.firsts = self.firsts, {}
        self.last_sent = time.monotonic()
        sched = self.core.scheduler if self.core is not None else None
        msg = (
            "ev",
            items,
            sched.steps if sched else 0,
            sched.decode_seconds if sched else 0.0,
            sched.step_seconds if sched else 0.0,
            firsts,
        )
        with self.lock:
            self.conn.send(msg)


def _serve(conn: Channel, spec: WorkerSpec) -> int:
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
    with send_lock:
        conn.send(("ready", core.describe()))
    outbox.core = core

    calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-calls")
    requests: dict[int, GenRequest] = {}

    def do_call(cid: int, name: str, args: tuple) -> None:
        try:
            if name == "tokenize_rendered":
                value: Any = core.tokenize_rendered(*args)
            elif name == "tokenize_segments":
                value = core.tokenize_segments(*args)
            elif name == "completion_prompt":
                value = core.completion_prompt(*args)
            elif name == "continuation_tokens":
                value = core.continuation_tokens(*args)
            elif name == "detokenize":
                value = core.detokenize(*args)
            elif name == "embed":
                value = core.embed(*args)
            elif name == "n_threads":
                value = core.n_threads()
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

            received = time.perf_counter()

            def emit(ev: EngineEvent, rid: int = rid, received: float = received) -> None:
                outbox.add(rid, ev, received)
                if is_final(ev):  # done or failed: the request is over
                    requests.pop(rid, None)

            req = GenRequest(
                prompt=prompt,
                params=params,
                max_new_tokens=max_new,
                stop=stop,
                emit=emit,
                rid=rid,
                submitted_at=received,
            )
            requests[rid] = req
            try:
                core.submit(req)
            except QueueFull:
                requests.pop(rid, None)
                outbox.add(
                    rid,
                    Failed(
                        "The node is at capacity: every slot is busy and the queue is full. "
                        "Retry after the indicated delay.",
                        "overloaded",
                    ),
                )
                outbox.flush()
            except EngineStopped:
                requests.pop(rid, None)
                outbox.add(rid, Failed("the model's engine stopped; retry in a few seconds", "engine_stopped"))
                outbox.flush()
        elif op == "cancel":
            cancelled = requests.pop(msg[1], None)
            with outbox.items_lock:
                outbox.started.discard(msg[1])
            if cancelled is not None:
                cancelled.cancel()
                core.scheduler.wake()
        elif op == "threads":
            core.set_threads(msg[1])
        elif op == "call":
            calls.submit(do_call, msg[1], msg[2], msg[3])
        elif op == "stop":
            break
    calls.shutdown(wait=True)
    core.close()
    return 0


def main() -> None:
    """Entry point of the worker process: the spec comes first on stdin; replies go to the real stdout,
    which is then pointed at stderr so that nothing else (a C library's printf) can corrupt the channel."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node decides when its workers stop
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    conn = Channel(sys.stdin.buffer, out)
    try:
        spec: WorkerSpec = conn.recv()
    except EOFError:
        os._exit(0)
    # The node sets LLAMA_CPP_LIB_PATH in this process's environment (the build to load) before it starts.
    logging.basicConfig(
        level=spec.log_level,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s engine[{spec.model_id}] %(name)s: %(message)s",
    )
    code = _serve(conn, spec)
    conn.close()
    # os._exit: llama.cpp's and Python's exit handlers have nothing left to do, and skipping them means a
    # wedged native thread cannot hold the process.
    os._exit(code)


if __name__ == "__main__":
    main()

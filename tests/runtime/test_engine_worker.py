"""The engine worker and its supervisor (runtime/engine/engine.py, worker.py, probe.py, variants.py).

The supervisor is driven with the real model in a real worker process; the probe is made to die on purpose
with a stand-in libllama whose constructor raises SIGILL, exactly as a build the CPU cannot run does.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.engine import engine as engine_mod
from runtime.engine import worker
from runtime.engine.cores import CoreShare
from runtime.engine.engine import EngineLoadError, ModelEngine
from runtime.engine.events import Finished, EngineConfig, Failed, GenRequest, SamplingParams, Text
from runtime.engine.probe import BuildRegistry, describe_exit, is_build_fault
from runtime.engine.variants import INSTALLED, LibraryVariant
from runtime.hardware import RuntimeCapability, detect, installed_llama_lib_dir

from ..conftest import wait_for

# -- pure parts ------------------------------------------------------------------------------------------


def test_exit_codes_in_plain_words():
    assert "illegal instruction" in describe_exit(-signal.SIGILL)
    assert "segmentation fault" in describe_exit(-signal.SIGSEGV)
    assert "aborted" in describe_exit(-signal.SIGABRT)
    assert "generation loop failed" in describe_exit(70)
    assert "code 3" in describe_exit(3)
    assert is_build_fault(-signal.SIGILL) and is_build_fault(-signal.SIGBUS)
    assert not is_build_fault(-signal.SIGSEGV) and not is_build_fault(0) and not is_build_fault(None)


def test_a_worker_spins_briefly_at_openmp_barriers_unless_the_user_chose():
    base = {"PATH": "/bin", "LLAMA_CPP_LIB_PATH": "/elsewhere"}
    env = worker.worker_env(base, {"LLAMA_CPP_LIB_PATH": "/variant"})
    assert env == {"PATH": "/bin", "LLAMA_CPP_LIB_PATH": "/variant", "GOMP_SPINCOUNT": str(worker.OMP_SPIN_COUNT)}
    assert "LLAMA_CPP_LIB_PATH" not in worker.worker_env(base, {})  # the installed build: no stale choice
    assert worker.worker_env({"GOMP_SPINCOUNT": "50000"}, {})["GOMP_SPINCOUNT"] == "50000"
    assert "GOMP_SPINCOUNT" not in worker.worker_env({"OMP_WAIT_POLICY": "ACTIVE"}, {})


def test_build_registry_remembers_a_fault_until_the_build_changes(tmp_path):
    lib = tmp_path / "v"
    lib.mkdir()
    (lib / "libllama.so").write_bytes(b"one build")
    v = LibraryVariant("avx512", lib)
    reg = BuildRegistry(tmp_path / "builds.json")
    assert reg.fault(v) is None
    reg.record_fault(v, "illegal instruction (SIGILL)")
    assert BuildRegistry(tmp_path / "builds.json").fault(v) == "illegal instruction (SIGILL)"
    (lib / "libllama.so").write_bytes(b"a reinstalled, different build")
    assert reg.fault(v) is None


# -- the real worker ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cap():
    c = detect()
    return RuntimeCapability(c, 2).cap


CFG = EngineConfig(threads=2, slots=2, ctx_per_slot=512)


class Collector:
    def __init__(self) -> None:
        self.events: list = []
        self.done = threading.Event()

    def __call__(self, ev) -> None:
        self.events.append(ev)
        if not isinstance(ev, Text):
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Text))


def _request(engine: ModelEngine, max_new: int, prompt_text: str = "Count from 1 to 100:") -> tuple[GenRequest, Collector]:
    prompt = asyncio.run(engine.completion_prompt(prompt_text))
    c = Collector()
    req = GenRequest(prompt=prompt, params=SamplingParams(temperature=0), max_new_tokens=max_new, stop=[], emit=c)
    engine.submit(req)
    return req, c


def test_generation_and_calls_through_the_worker(model_path, cap):
    e = ModelEngine("m", model_path, cap, CFG)
    try:
        assert e.n_vocab > 1000 and e.n_ctx_seq == 512 and e.n_slots == 2
        toks = asyncio.run(e.completion_prompt("Hello world"))
        assert asyncio.run(e.detokenize(toks)).strip() == "Hello world"
        _, c = _request(e, 8)
        assert c.done.wait(60)
        done = c.events[-1]
        assert isinstance(done, Finished) and done.completion_tokens == 8 and c.text
        vec, n = asyncio.run(e.embed("a sentence"))
        assert n > 0 and abs(sum(v * v for v in vec) - 1.0) < 1e-3
        assert e.stats.summary()["samples"] == 1
        # The worker hop of that request, timed from both sides of the pipe on the system's monotonic clock.
        hop = e.hop_ms()
        assert hop is not None and 0 <= hop < 5000, hop
        assert e.status()["engine_hop_ms_p50"] == round(hop, 3)
        # The worker really runs with the bounded OpenMP spin (libgomp reads it when llama.cpp loads).
        if sys.platform.startswith("linux") and "OMP_WAIT_POLICY" not in os.environ:
            environ = Path(f"/proc/{e._proc.pid}/environ").read_bytes().split(b"\0")
            spin = os.environ.get("GOMP_SPINCOUNT", str(worker.OMP_SPIN_COUNT))
            assert f"GOMP_SPINCOUNT={spin}".encode() in environ
    finally:
        e.close()
    assert e.state == "closed" and e._proc.poll() is not None


def test_engines_generating_at_once_share_the_threads(model_path, cap):
    """Two workers decoding at once with every thread each would run twice as many busy threads as cores
    (engine/cores.py): while both generate each uses half, and one left alone gets them all back."""
    share = CoreShare()
    e1 = ModelEngine("one", model_path, cap, CFG, share=share)
    e2 = ModelEngine("two", model_path, cap, CFG, share=share)
    no_end = SamplingParams(temperature=0, logit_bias={0: -100.0, 2: -100.0})  # SmolLM2's end tokens

    def long_request(e: ModelEngine) -> tuple[GenRequest, Collector]:
        c = Collector()
        r = GenRequest(prompt=asyncio.run(e.completion_prompt("Count from 1 to 1000:")), params=no_end,
                       max_new_tokens=480, stop=[], emit=c)
        e.submit(r)
        return r, c

    def threads(e: ModelEngine) -> int:
        return asyncio.run(e.n_threads())

    try:
        _, c1 = long_request(e1)
        wait_for(lambda: c1.events, 60, what="the first answer's first token")
        assert e1.threads == 2 and threads(e1) == 2
        r2, c2 = long_request(e2)
        wait_for(lambda: c2.events, 60, what="the second answer's first token")
        wait_for(lambda: threads(e1) == 1 and threads(e2) == 1, 60, what="both workers on one thread each")
        assert e1.threads == e2.threads == 1 and e1.status()["threads"] == 1
        e2.cancel(r2)
        wait_for(lambda: threads(e1) == 2, 60, what="the first worker back on both threads")
        assert e1.threads == 2 and not c1.done.is_set(), "the answer ran on across both changes"
        assert c1.done.wait(300)
        end = c1.events[-1]
        assert isinstance(end, Finished) and end.completion_tokens == 480, end
        # the second engine, generating alone now, starts with every thread
        _, c3 = long_request(e2)
        wait_for(lambda: c3.events, 60, what="a third answer")
        assert e2.threads == 2 and threads(e2) == 2
    finally:
        e1.close()
        e2.close()


def test_a_crash_fails_the_running_requests_and_the_worker_restarts(model_path, cap, monkeypatch):
    monkeypatch.setattr(engine_mod, "RESTART_BACKOFF", (0.05, 0.05, 0.05))
    states: list[tuple[str, str | None]] = []
    e = ModelEngine("m", model_path, cap, CFG, on_state=lambda s, r: states.append((s, r)))
    try:
        first_pid = e._proc.pid
        _, c = _request(e, 400)
        wait_for(lambda: c.events, 60, what="the first token")
        os.kill(first_pid, signal.SIGSEGV)
        assert c.done.wait(30), "a request hung after its engine crashed"
        err = c.events[-1]
        assert isinstance(err, Failed) and err.code == "engine_crashed" and "segmentation fault" in err.message
        wait_for(lambda: ("ready", None) in states, 60, what="the restart")
        assert states[0][0] == "restarting" and "segmentation fault" in states[0][1]
        assert e.restarts == 1 and e._proc.pid != first_pid
        _, c2 = _request(e, 4)
        assert c2.done.wait(60) and isinstance(c2.events[-1], Finished)
        # One crash more than the window allows: given up, with the reason.
        for i in range(3):
            os.kill(e._proc.pid, signal.SIGKILL)
            wait_for(lambda: len(states) >= 2 * (i + 2) or states[-1][0] == "failed", 60, what=f"crash {i + 2}")
        wait_for(lambda: states[-1][0] == "failed", 60, what="giving up")
        assert "crashed 4 times" in states[-1][1] and e.state == "failed"
    finally:
        e.close()


def test_a_hung_worker_is_stopped_and_restarted_and_an_idle_one_is_left_alone(model_path, cap, monkeypatch):
    """Native code can hang instead of crashing. A worker frozen (SIGSTOP) mid-answer says nothing past the
    stall timeout: it is killed, its request ends with an error naming the hang, and it restarts. A worker
    that says nothing because it has nothing to do is not a stall."""
    monkeypatch.setattr(engine_mod, "RESTART_BACKOFF", (0.05, 0.05, 0.05))
    states: list[tuple[str, str | None]] = []
    cfg = EngineConfig(threads=2, slots=2, ctx_per_slot=512, stall_timeout=5.0)
    e = ModelEngine("m", model_path, cap, cfg, on_state=lambda s, r: states.append((s, r)))
    try:
        idle_pid = e._proc.pid
        os.kill(idle_pid, signal.SIGSTOP)  # idle and frozen: nothing is owed, so nothing is wrong
        try:
            time.sleep(2 * cfg.stall_timeout)  # a negative: it must stay alive past the timeout
        finally:
            os.kill(idle_pid, signal.SIGCONT)
        assert states == [] and e._proc.pid == idle_pid and e.state == "ready"

        _, c = _request(e, 400)
        wait_for(lambda: c.events, 60, what="the first token")
        os.kill(idle_pid, signal.SIGSTOP)
        assert c.done.wait(60), "a request hung with its engine"
        err = c.events[-1]
        assert isinstance(err, Failed) and err.code == "engine_crashed"
        assert "stopped responding" in err.message and "made no progress" in err.message
        wait_for(lambda: ("ready", None) in states, 60, what="the restart")
        assert states[0][0] == "restarting" and "hung" in states[0][1]
        assert e.restarts == 1 and e._proc.pid != idle_pid
        _, c2 = _request(e, 4)
        assert c2.done.wait(60) and isinstance(c2.events[-1], Finished)
    finally:
        e.close()


def _sigill_lib(dest: Path) -> Path:
    """A libllama.so that dies of SIGILL as it is loaded: a build this CPU cannot run."""
    dest.mkdir(parents=True)
    src = dest / "die.c"
    src.write_text("#include <signal.h>\n__attribute__((constructor)) static void die(void) { raise(SIGILL); }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(dest / "libllama.so"), str(src)], check=True)
    return dest


def _installed_copy(dest: Path) -> Path:
    """A variant folder holding the installed build (as a bundle's variant folder would)."""
    lib = installed_llama_lib_dir()
    assert lib is not None
    shutil.copytree(lib, dest, symlinks=True)
    return dest


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler for the stand-in library")
def test_probe_falls_back_from_a_build_that_traps_and_never_retries_it(model_path, cap, tmp_path):
    bad = LibraryVariant("avx512", _sigill_lib(tmp_path / "variants" / "avx512"))
    good = LibraryVariant("avx2", _installed_copy(tmp_path / "variants" / "avx2"))
    reg = BuildRegistry(tmp_path / "builds.json")
    e = ModelEngine("m", model_path, cap, CFG, builds=reg, variants=[bad, good])
    try:
        assert e.variant == good
        assert "illegal instruction" in e.skipped_variants["avx512"]
        assert "illegal instruction" in reg.fault(bad)
        assert e.status()["engine"]["llama_build"] == "avx2"
        _, c = _request(e, 4)
        assert c.done.wait(60) and isinstance(c.events[-1], Finished)
    finally:
        e.close()
    # The next start does not run the bad build again (its constructor would kill the worker at once).
    spawned: list[str] = []
    real_spawn = ModelEngine._spawn

    def spy(self, variant):
        spawned.append(variant.name)
        return real_spawn(self, variant)

    ModelEngine._spawn = spy
    try:
        e2 = ModelEngine("m", model_path, cap, CFG, builds=reg, variants=[bad, good])
        e2.close()
    finally:
        ModelEngine._spawn = real_spawn
    assert spawned == ["avx2"]


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler for the stand-in library")
def test_when_every_build_traps_the_load_fails_in_plain_words(model_path, cap, tmp_path):
    bad = LibraryVariant(INSTALLED, _sigill_lib(tmp_path / "only"))
    with pytest.raises(EngineLoadError) as exc:
        ModelEngine("m", model_path, cap, CFG, builds=BuildRegistry(tmp_path / "b.json"), variants=[bad])
    msg = str(exc.value)
    assert "cannot run on this computer's processor" in msg and "illegal instruction" in msg


def test_a_file_llama_cpp_refuses_is_a_clean_load_error(cap, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(EngineLoadError) as exc:
        ModelEngine("junk", junk, cap, CFG)
    assert "could not load" in str(exc.value)


def test_importing_the_node_does_not_load_llama_cpp():
    """The node's process imports everything it serves with, and llama.cpp is not among it."""
    code = ("import sys, runtime.cli, runtime.api.app, runtime.node, runtime.server, runtime.generation, "
            "runtime.mesh.mesh, runtime.validation; print(sorted(m for m in sys.modules if m.startswith('llama_cpp')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_bug_in_the_loop_fails_its_requests_and_reports_the_crash(model_path, cap):
    """A Python exception in the decode loop: the requests it held end with engine_crashed (none hangs),
    queued ones with a retryable engine_stopped, and on_crash fires (the worker then exits and is
    restarted by its supervisor, like any other crash)."""
    from runtime.engine.core import EngineCore

    crashed = threading.Event()
    core = EngineCore("m", model_path, cap, EngineConfig(threads=2, slots=1, ctx_per_slot=512),
                      on_crash=lambda e: crashed.set())
    try:
        real_step = core.scheduler._step
        calls = {"n": 0}

        def failing_step() -> None:
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("a bug")
            real_step()

        core.scheduler._step = failing_step
        prompt = core.completion_prompt("Count from 1 to 100:")
        running, queued = Collector(), Collector()
        core.submit(GenRequest(prompt=prompt, params=SamplingParams(temperature=0), max_new_tokens=200, stop=[],
                               emit=running))
        core.submit(GenRequest(prompt=prompt, params=SamplingParams(temperature=0), max_new_tokens=200, stop=[],
                               emit=queued))
        assert running.done.wait(30) and queued.done.wait(30), "a request hung after the loop failed"
        assert running.events[-1].code == "engine_crashed"
        assert queued.events[-1].code == "engine_stopped"
        assert crashed.wait(5)
    finally:
        core.close()


def test_every_llama_cpp_computation_runs_on_the_engine_thread(model_path, cap, monkeypatch):
    """llama.cpp's OpenMP build keeps a thread pool per calling thread; a second calling thread (the load
    probe on the main thread, embeddings on the calls thread) gave the process more pooled threads than
    cores, after which every decode step's threads slept in the kernel between parallel regions instead of
    spinning: one stream ran 20-30% slower in the worker than in process. So the probe, generation and
    embeddings all decode on the scheduler's thread (Scheduler.call)."""
    from runtime.engine.core import EngineCore
    from runtime.engine.events import EngineStopped
    from runtime.engine.llama_model import LlamaContext

    callers: list[threading.Thread] = []
    real_decode = LlamaContext.decode

    def recording_decode(self, entries):
        callers.append(threading.current_thread())
        return real_decode(self, entries)

    monkeypatch.setattr(LlamaContext, "decode", recording_decode)
    core = EngineCore("m", model_path, cap, EngineConfig(threads=2, slots=1, ctx_per_slot=512))
    try:
        core.probe()
        c = Collector()
        core.submit(GenRequest(prompt=core.completion_prompt("Count from 1 to 10:"), params=SamplingParams(temperature=0),
                               max_new_tokens=4, stop=[], emit=c))
        assert c.done.wait(60) and isinstance(c.events[-1], Finished)
        vec, n = core.embed("a sentence")
        assert n > 0 and len(vec) > 10
        assert len(callers) >= 1 + 4 + 1
        assert {t.name for t in callers} == {core.scheduler._thread.name}, {t.name for t in callers}
        # A job's exception is its caller's, and the loop goes on.
        with pytest.raises(ZeroDivisionError):
            core.scheduler.call(lambda: 1 / 0).result(30)
        assert core.scheduler.call(lambda: 42).result(30) == 42
    finally:
        core.close()
    with pytest.raises(EngineStopped):
        core.scheduler.call(lambda: 1)


def test_the_worker_says_nothing_before_ready_however_long_the_load_takes():
    """The load probe runs on the engine thread, whose loop reports progress at least once a second: on a
    loaded machine a load took longer than that, and an empty progress message went out before "ready"
    (the node took it for the answer to its spec and the model failed to load)."""
    from types import SimpleNamespace

    from runtime.engine import worker as worker_mod

    sent: list = []
    out = worker_mod._Outbox(SimpleNamespace(send=sent.append), threading.Lock())
    out.last_sent = time.monotonic() - 10 * worker_mod.PROGRESS_INTERVAL
    out.flush()
    assert sent == []
    out.core = SimpleNamespace(scheduler=SimpleNamespace(steps=3, decode_seconds=0.5, step_seconds=0.6))
    out.flush()  # ready: silence for that long is now reported as progress
    assert len(sent) == 1 and sent[0][0] == "ev" and sent[0][1] == [] and sent[0][2] == 3

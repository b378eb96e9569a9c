"""The cost of running the engine in a worker process, measured side by side in one run.

Two engines over the same model file, driven the same way from this process, alternating round by round:
- "worker": ModelEngine, the node's real engine (a supervised worker process; tokenizing is a call to it,
  events come back over a pipe once per decode step);
- "in-process": EngineCore, the same llama.cpp code run in this process, as the node did before.

Both hand their events to an asyncio event loop running in another thread through the node's LoopPump,
as the node does (one wake-up of the loop per decode step at most), so the comparison includes the hop the
node always had (engine thread → event loop) and isolates what the worker adds (pipe → reader thread).

Prints, per stream count, the median over rounds of aggregate decode tok/s and the ratio worker/in-process
(target >= 0.95); the worker hop's own cost in the time to first token of one request at a time, timed
inside the node (ModelEngine.hop_ms: node → worker plus first event → node, from timestamps taken on both
sides of the pipe; target <= 2 ms); and, as a cross-check, the end-to-end TTFT from "prompt text handed
over" to "first token here" of both engines.

    .venv/bin/python bench/bench_worker.py [--rounds 6] [--tokens 128] [--ttft-samples 30]

``--together N``: instead, N alternating rounds of two workers decoding one stream each at the same time
(a node serving two models, or two nodes on one machine) against one worker alone, three ways: as a node
runs them (bounded OpenMP spin, worker.OMP_SPIN_COUNT, and the threads shared while both generate,
engine/cores.py), with the bounded spin only (two nodes on one machine), and with libgomp's default spin
(GOMP_SPINCOUNT=300000). Prints the aggregate tok/s of each and the ratio together / alone (a spinning
thread that holds the core its sibling needs makes "together" collapse).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.engine.cores import CoreShare  # noqa: E402
from runtime.engine.engine import ModelEngine  # noqa: E402
from runtime.engine.events import EngineConfig, Finished, GenRequest, SamplingParams, Text  # noqa: E402
from runtime.generation import LoopPump  # noqa: E402
from runtime.hardware import RuntimeCapability, default_threads, detect  # noqa: E402
from runtime.models.embedded import ensure_default_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# The event loop the events go to, as in the node (handlers read them from asyncio queues).
LOOP = asyncio.new_event_loop()
threading.Thread(target=LOOP.run_forever, daemon=True).start()
PUMP = LoopPump(LOOP)


def via_loop(fn):
    """An emit that hands the event to the event loop (LoopPump), where ``fn`` handles it."""

    class Sink:
        def put_nowait(self, ev) -> None:
            fn(ev)

    sink = Sink()
    return lambda ev: PUMP.put(sink, ev)  # type: ignore[arg-type]


class InProcess:
    """EngineCore behind the same calls the benchmark makes on ModelEngine."""

    def __init__(self, path: Path, cap, cfg: EngineConfig) -> None:
        from runtime.engine.core import EngineCore

        self.core = EngineCore("bench", path, cap, cfg)

    async def completion_prompt(self, text: str) -> list[int]:
        return self.core.completion_prompt(text)

    def submit(self, req: GenRequest) -> None:
        self.core.submit(req)

    def close(self) -> None:
        self.core.close()


def run_streams(engine, n: int, tokens: int, tag: str) -> float:
    """n concurrent greedy generations of ``tokens`` tokens each; aggregate tok/s."""
    done = threading.Semaphore(0)
    counts = [0] * n

    def emitter(i: int):
        def emit(ev) -> None:
            if isinstance(ev, Text):
                counts[i] += 1
            else:
                if not isinstance(ev, Finished):
                    raise SystemExit(f"{tag}: {ev}")
                done.release()
        return emit

    prompts = [asyncio.run(engine.completion_prompt(f"[{tag} {i} {time.time_ns()}] Tell a long story about the sea:"))
               for i in range(n)]
    t0 = time.perf_counter()
    for i in range(n):
        engine.submit(GenRequest(prompt=prompts[i], params=SamplingParams(temperature=0, seed=1),
                                 max_new_tokens=tokens, stop=[], emit=via_loop(emitter(i))))
    for _ in range(n):
        done.acquire()
    return sum(counts) / (time.perf_counter() - t0)


def ttft(engine, tag: str, i: int) -> float:
    """Prompt text handed over → first token event here, in ms (one request alone)."""
    first = threading.Event()
    finished = threading.Event()
    stamp: list[float] = []

    def emit(ev) -> None:
        if isinstance(ev, Text) and not stamp:
            stamp.append(time.perf_counter())
            first.set()
        if not isinstance(ev, Text):
            finished.set()

    t0 = time.perf_counter()
    prompt = asyncio.run(engine.completion_prompt(f"[{tag} {i} {time.time_ns()}] The capital of France is"))
    engine.submit(GenRequest(prompt=prompt, params=SamplingParams(temperature=0), max_new_tokens=2, stop=[],
                             emit=via_loop(emit)))
    first.wait(60)
    finished.wait(60)
    return (stamp[0] - t0) * 1000


def together(path: Path, cap, threads: int, rounds: int, tokens: int) -> None:
    """Two workers decoding at once vs one alone, with the worker's spin bound and with libgomp's default."""
    from runtime.engine import worker as worker_mod

    cfg = EngineConfig(threads=threads, slots=2, ctx_per_slot=1024)
    bounded, default = str(worker_mod.OMP_SPIN_COUNT), "300000"
    # name -> (GOMP_SPINCOUNT, the two engines share the threads as a node's do)
    setups = {"node (shared)": (bounded, True), "bounded spin": (bounded, False), "libgomp default": (default, False)}
    engines = {}
    for name, (spin, shared) in setups.items():
        os.environ["GOMP_SPINCOUNT"] = spin  # a user's setting: worker_env keeps it
        share = CoreShare() if shared else None
        engines[name] = tuple(ModelEngine(f"{name}-{i}", path, cap, cfg, share=share) for i in (1, 2))
    os.environ.pop("GOMP_SPINCOUNT")
    print(f"model {path.name}, {threads} threads per worker, {rounds} rounds alternating, {tokens} tokens/stream")
    alone: dict[str, list[float]] = {k: [] for k in setups}
    both: dict[str, list[float]] = {k: [] for k in setups}
    try:
        for r in range(rounds):
            for name in list(setups) if r % 2 == 0 else list(reversed(setups)):
                e1, e2 = engines[name]
                alone[name].append(run_streams(e1, 1, tokens, name))
                ts = [threading.Thread(target=run_streams, args=(e, 1, tokens, name)) for e in (e1, e2)]
                t0 = time.perf_counter()
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                both[name].append(2 * tokens / (time.perf_counter() - t0))
        for name in setups:
            a, b = statistics.median(alone[name]), statistics.median(both[name])
            spin, shared = setups[name]
            how = f"GOMP_SPINCOUNT={spin}, threads {'shared' if shared else 'each'}"
            print(f"{name:16s} ({how}): alone {a:6.1f} tok/s, two workers together {b:6.1f} tok/s in all, "
                  f"ratio {b / a:.2f}  (together, rounds: {[round(x, 1) for x in both[name]]})")
    finally:
        for pair in engines.values():
            for e in pair:
                e.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--ttft-samples", type=int, default=30)
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--together", type=int, metavar="ROUNDS", help="two workers at once vs one alone (see above)")
    args = ap.parse_args()
    path = ensure_default_model(REPO / ".cache" / "models")
    cap = detect()
    threads = default_threads(cap)
    cap = RuntimeCapability(cap, threads).cap
    if args.together:
        together(path, cap, threads, args.together, args.tokens)
        return
    cfg = EngineConfig(threads=threads, slots=8, ctx_per_slot=1024)
    worker = ModelEngine("bench", path, cap, cfg)
    inproc = InProcess(path, cap, cfg)
    engines = {"worker": worker, "in-process": inproc}
    print(f"model {path.name}, {threads} threads, {args.rounds} rounds alternating, {args.tokens} tokens/stream")
    try:
        for n in (int(x) for x in args.streams.split(",")):
            results: dict[str, list[float]] = {k: [] for k in engines}
            for r in range(args.rounds):
                order = list(engines) if r % 2 == 0 else list(reversed(engines))
                for name in order:
                    results[name].append(run_streams(engines[name], n, args.tokens, name))
            w, p = statistics.median(results["worker"]), statistics.median(results["in-process"])
            print(f"{n} stream(s): worker {w:6.1f} tok/s, in-process {p:6.1f} tok/s, ratio {w / p:.3f}  "
                  f"(rounds: {[round(x, 1) for x in results['worker']]} vs {[round(x, 1) for x in results['in-process']]})")
        samples: dict[str, list[float]] = {k: [] for k in engines}
        worker._hops.clear()  # the hop of requests alone, not of the batches above
        for i in range(args.ttft_samples):
            for name in (list(engines) if i % 2 == 0 else list(reversed(engines))):
                samples[name].append(ttft(engines[name], name, i))
        hops = list(worker._hops)
        print(f"worker hop, timed inside the node ({len(hops)} requests alone): p50 {statistics.median(hops):.2f} ms, "
              f"max {max(hops):.2f} ms")
        w, p = statistics.median(samples["worker"]), statistics.median(samples["in-process"])
        print(f"TTFT p50 end to end (one request, prompt text → first token): worker {w:.2f} ms, "
              f"in-process {p:.2f} ms, difference {w - p:+.2f} ms")
    finally:
        worker.close()
        inproc.close()


if __name__ == "__main__":
    main()

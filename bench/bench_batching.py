"""Continuous batching benchmark: ClosedMesh vs llama.cpp's llama-server vs llama_cpp.server vs
in-process llama_cpp.Llama, same GGUF, same thread count, measured side by side in one run (rounds
alternate between the servers, medians are reported).

    .venv/bin/python bench/bench_batching.py [--rounds 3] [--tokens 128] [--soak 1000]

Prints a Markdown report (also written to --out).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    EOS_BAN, concurrent_streams, p50, p95, start_closedmesh, start_llama_cpp_server, start_llama_server,
    which_llama_server,
)
from runtime.models.embedded import ensure_default_model  # noqa: E402

TOPICS = ["the sea", "a mountain", "a robot", "a city at night", "a lost key", "the moon", "a small cat", "winter",
          "a library", "a train journey", "an old clock", "a garden"]


def prompts(n: int, tag: str) -> list[str]:
    # Distinct beginnings so no server gets a free ride from prompt caching between requests.
    return [f"[{tag}-{i}] Write a long story about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


def inprocess_single(llm, n_tokens: int, tag: str, runs: int = 1) -> tuple[list, list]:
    """One streamed chat completion through in-process llama_cpp.Llama, measured like the servers."""
    tps, ttft = [], []
    for r in range(runs):
        t0 = time.perf_counter()
        first = last = None
        n = 0
        for chunk in llm.create_chat_completion(
                [{"role": "user", "content": prompts(1, f"{tag}-{r}")[0]}], max_tokens=n_tokens, temperature=0,
                stream=True, logit_bias={int(k): v for k, v in EOS_BAN.items()}):
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                n += 1
        ttft.append(first - t0)
        tps.append((n - 1) / (last - first))
    return tps, ttft


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--levels", default="1,2,4,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--single-samples", type=int, default=3, help="single-stream requests per server per round")
    ap.add_argument("--ctx", type=int, default=1024, help="context per slot")
    ap.add_argument("--soak", type=int, default=1000, help="requests in the memory soak (0 skips it)")
    ap.add_argument("--skip-llama-cpp-server", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    slots = max(levels)
    model = ensure_default_model(Path(__file__).resolve().parent.parent / ".cache" / "models")
    binary = which_llama_server()
    servers = {}
    try:
        servers["closedmesh"] = start_closedmesh(model, slots, args.ctx, args.threads)
        if binary:
            servers["llama-server"] = start_llama_server(binary, model, slots, args.ctx, args.threads)
        if not args.skip_llama_cpp_server:
            servers["llama_cpp.server"] = start_llama_cpp_server(model, args.ctx, args.threads)
        ours = psutil.Process(servers["closedmesh"].proc.pid)
        rss_idle = ours.memory_info().rss

        from llama_cpp import Llama

        llm = Llama(str(model), n_threads=args.threads, n_threads_batch=args.threads, n_ctx=args.ctx, verbose=False)
        inprocess_single(llm, 8, "warm")
        inproc_tps, inproc_ttft = [], []
        single: dict[str, dict[str, list]] = {n: {"tps": [], "ttft": []} for n in servers}
        agg: dict[str, dict[int, list]] = {n: {c: [] for c in levels} for n in servers}
        ttft8: dict[str, list] = {n: [] for n in servers}
        broken: dict[str, dict[int, int]] = {n: {c: 0 for c in levels} for n in servers}
        peak8 = 0
        for r in range(args.rounds):
            for name, srv in servers.items():
                # warm-up (first request pays one-off costs on every server)
                if r == 0:
                    asyncio.run(concurrent_streams(srv.url, prompts(1, f"warm-{name}"), 8))
                for k in range(args.single_samples):
                    res, _ = asyncio.run(concurrent_streams(srv.url, prompts(1, f"s{r}.{k}-{name}"), args.tokens))
                    assert not res[0].error, (name, res[0].error)
                    assert res[0].tokens >= args.tokens - 2, (name, res[0].tokens)
                    single[name]["tps"].append(res[0].decode_tps)
                    single[name]["ttft"].append(res[0].ttft)
                for c in levels:
                    if name == "closedmesh" and c == max(levels):
                        with RssSampler(srv.proc.pid) as smp:
                            res, wall = asyncio.run(concurrent_streams(srv.url, prompts(c, f"c{c}r{r}"), args.tokens))
                        peak8 = max(peak8, smp.peak)
                    else:
                        res, wall = asyncio.run(concurrent_streams(srv.url, prompts(c, f"c{c}r{r}"), args.tokens))
                    errs = [x.error for x in res if x.error]
                    if name == "closedmesh":
                        assert not errs, (name, c, errs[:2])  # ours must never drop work
                    broken[name][c] += len(errs)
                    # Only tokens of answers that completed count as work done.
                    agg[name][c].append(sum(x.tokens for x in res if not x.error) / wall)
                    if c == max(levels):
                        ttft8[name].extend(x.ttft for x in res if not x.error)
            # in-process baseline in the same round, so it sees the same machine conditions
            t, f = inprocess_single(llm, args.tokens, f"inproc{r}", runs=args.single_samples)
            inproc_tps += t
            inproc_ttft += f
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        del llm
        # TTFT overhead vs in-process: same prompts shape, single stream.
        st = __import__("httpx").get(servers["closedmesh"].url + "/api/status").json()["models"][0]

        soak = None
        if args.soak:
            srv = servers["closedmesh"]
            async def soak_run(n: int) -> None:
                for i in range(0, n, 8):
                    res, _ = await asyncio.to_thread(lambda: asyncio.run(concurrent_streams(
                        srv.url, prompts(min(8, n - i), f"soak{i}"), 16)))
                    assert not [x for x in res if x.error]
            asyncio.run(soak_run(100))
            rss_warm = ours.memory_info().rss
            asyncio.run(soak_run(args.soak - 100))
            rss_end = ours.memory_info().rss
            soak = (rss_warm, rss_end)
    finally:
        for s in servers.values():
            s.stop()

    names = list(servers)
    mb = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    lines = [f"Model SmolLM2-135M-Instruct Q4_1, {args.threads} threads, {slots} slots × {args.ctx} ctx, "
             f"{args.tokens}-token answers, {args.rounds} alternating rounds, medians.", ""]
    lines += ["### 1. Single stream (HTTP streaming)", "",
              "| | decode tok/s | TTFT p50 ms |", "|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | {p50(single[n]['tps']):.1f} | {p50(single[n]['ttft']) * 1000:.1f} |")
    lines.append(f"| in-process llama_cpp.Llama | {p50(inproc_tps):.1f} | {p50(inproc_ttft) * 1000:.1f} |")
    ours_tps = p50(single["closedmesh"]["tps"])
    lines += ["", f"- ClosedMesh / in-process Llama decode: **{ours_tps / p50(inproc_tps):.2f}×**",
              f"- ClosedMesh TTFT overhead over in-process p50: **{(p50(single['closedmesh']['ttft']) - p50(inproc_ttft)) * 1000:+.1f} ms**"]
    if "llama-server" in names:
        lines.append(f"- ClosedMesh / llama-server decode: **{ours_tps / p50(single['llama-server']['tps']):.2f}×**")
    lines += ["", "### 2. Aggregate tok/s by concurrent streams", "",
              "| streams | " + " | ".join(names) + " | ClosedMesh / llama-server | ClosedMesh / llama_cpp.server |",
              "|---" * (len(names) + 3) + "|"]
    for c in levels:
        row = [f"{p50(agg[n][c]):.1f}" for n in names]
        r1 = f"{p50(agg['closedmesh'][c]) / p50(agg['llama-server'][c]):.2f}×" if "llama-server" in names else "-"
        r2 = (f"{p50(agg['closedmesh'][c]) / p50(agg['llama_cpp.server'][c]):.2f}×"
              if "llama_cpp.server" in names else "-")
        lines.append(f"| {c} | " + " | ".join(row) + f" | {r1} | {r2} |")
    cut = {n: sum(broken[n].values()) for n in names if sum(broken[n].values())}
    if cut:
        lines += ["", "Answers cut off (broken HTTP body or error; their tokens are not counted): "
                  + ", ".join(f"{n}: {k}" for n, k in cut.items())]
    lines += ["", f"### 3. TTFT with {max(levels)} concurrent streams", "", "| | p50 ms | p95 ms |", "|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | {p50(ttft8[n]) * 1000:.0f} | {p95(ttft8[n]) * 1000:.0f} |")
    lines += ["", "### 4. Memory (ClosedMesh RSS)", "",
              f"- idle with the model loaded: **{mb(rss_idle)}**; peak under {max(levels)} streams: **{mb(peak8)}** "
              f"(KV cache {mb(st['kv_cache_bytes'])})"]
    if soak:
        lines.append(f"- soak of {args.soak} requests: {mb(soak[0])} after 100 → {mb(soak[1])} after {args.soak} "
                     f"(**{(soak[1] / soak[0] - 1) * 100:+.1f}%**)")
    steps, dec, stp = st["engine_steps"], st["engine_decode_seconds"], st["engine_step_seconds"]
    lines += ["", "### Engine time split (whole run)", "",
              f"- {steps} steps; llama_decode {dec:.1f} s of {stp:.1f} s in steps → Python overhead per step "
              f"**{(stp - dec) / max(1, steps) * 1000:.2f} ms** ({(1 - dec / stp) * 100:.1f}% of step time)"]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Through the mesh vs directly on the serving node, side by side in one run.

  .venv/bin/python bench/bench_mesh.py [--rounds 6] [--kills 5]

Three nodes and a hub on loopback, each node its own process: A (the entry the client talks to; it does
not serve the model), B and C (serve the model "shared"; C joins only for the failover runs, so that
speed is compared on one engine). Each round measures, in alternating order:
  - direct: the client streams from B's own HTTP API;
  - mesh:   the client streams from A, which routes the request to B through the hub.
Reported: single-stream decode tok/s ratio (mesh / direct; target >= 0.95), TTFT p50/p95 for both and the
mesh's TTFT overhead p50 (target <= 15 ms), and the gap the client sees when its serving peer is killed
(SIGKILL) mid-stream, p50 over --kills runs (target <= 3 s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import EOS_BAN, p50, p95, stream_chat  # noqa: E402
from tests.conftest import MODEL_CACHE, ensure_default_model  # noqa: E402
from tests.mesh.conftest import join, mesh_status, peer_names, start_hub, start_mesh_node  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper."


async def one(url: str, max_tokens: int, model: str = "shared"):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        return await stream_chat(s, url, PROMPT, max_tokens, model=model)


async def gap_when_killed(entry_url: str, nodes: dict, max_tokens: int) -> tuple[float, str, int]:
    """Stream from the entry, SIGKILL the serving peer after 20 tokens; the largest pause between two
    tokens the client saw, which peer was killed, and how many tokens arrived in all."""
    body = {"model": "shared", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "logit_bias": EOS_BAN}
    stamps: list[float] = []
    killed = ""
    import json
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        async with s.post(entry_url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200, await r.text()
            buf = b""
            async for data in r.content.iter_any():
                buf += data
                while b"\n\n" in buf:
                    ev, buf = buf.split(b"\n\n", 1)
                    if not ev.startswith(b"data: {"):
                        continue
                    obj = json.loads(ev[6:])
                    if "error" in obj:
                        raise RuntimeError(obj)
                    ch = obj.get("choices") or []
                    if ch and (ch[0].get("delta") or {}).get("content"):
                        stamps.append(time.perf_counter())
                        if len(stamps) == 20:
                            for name, n in nodes.items():
                                if n.proc.poll() is None and mesh_status(n)["serving_mesh_requests"]:
                                    os.kill(n.proc.pid, signal.SIGKILL)
                                    killed = name
                                    break
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return max(gaps), killed, len(stamps)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--ttft-samples", type=int, default=30)
    args = ap.parse_args()
    model = ensure_default_model(MODEL_CACHE)
    tmp = Path(tempfile.mkdtemp(prefix="bench-mesh-"))
    hub = start_hub(tmp / "hub")
    nodes = {}
    try:
        nodes["a"] = start_mesh_node(tmp, "a", model, "alpha")
        nodes["b"] = start_mesh_node(tmp, "b", model, "shared")
        for k, n in nodes.items():
            join(n, hub.invite(), k)
        deadline = time.time() + 20
        while peer_names(nodes["a"]) != {"b"} and time.time() < deadline:
            time.sleep(0.1)
        a, b = nodes["a"], nodes["b"]
        # Only B serves the model while speed is measured: both paths end in the same engine.
        asyncio.run(one(b.base_url, 16))  # warm both paths (model pages, prompt cache)
        asyncio.run(one(a.base_url, 16))
        direct, mesh = [], []
        for r in range(args.rounds):
            order = [("direct", b.base_url), ("mesh", a.base_url)]
            if r % 2:
                order.reverse()
            for name, url in order:
                res = asyncio.run(one(url, args.max_tokens))
                assert res.error is None, res.error
                (direct if name == "direct" else mesh).append(res)
        d_tps = p50([x.decode_tps for x in direct])
        m_tps = p50([x.decode_tps for x in mesh])
        d_ttft = [x.ttft * 1000 for x in direct]
        m_ttft = [x.ttft * 1000 for x in mesh]
        print(f"rounds: {args.rounds}, {args.max_tokens} tokens each, one stream at a time (2-core CPU)")
        print(f"{'':10}{'tok/s p50':>12}{'TTFT p50 ms':>14}{'TTFT p95 ms':>14}")
        print(f"{'direct':10}{d_tps:12.1f}{p50(d_ttft):14.1f}{p95(d_ttft):14.1f}")
        print(f"{'mesh':10}{m_tps:12.1f}{p50(m_ttft):14.1f}{p95(m_ttft):14.1f}")
        print(f"tok/s ratio mesh/direct: {m_tps / d_tps:.3f}  (target >= 0.95)")
        # TTFT on its own: many short requests, alternating, so the two distributions are comparable.
        dt, mt = [], []
        for r in range(args.ttft_samples):
            order = [(dt, b.base_url), (mt, a.base_url)]
            if r % 2:
                order.reverse()
            for acc, url in order:
                res = asyncio.run(one(url, 2))
                assert res.error is None, res.error
                acc.append(res.ttft * 1000)
        print(f"TTFT over {args.ttft_samples} short requests each: direct p50 {p50(dt):.1f} ms p95 {p95(dt):.1f}; "
              f"mesh p50 {p50(mt):.1f} ms p95 {p95(mt):.1f}")
        print(f"TTFT overhead of the mesh: p50 {p50(mt) - p50(dt):.1f} ms (target <= 15 ms)")

        nodes["c"] = start_mesh_node(tmp, "c", model, "shared")  # a second server for the failover runs
        join(nodes["c"], hub.invite(), "c")
        deadline = time.time() + 20
        while peer_names(a) != {"b", "c"} and time.time() < deadline:
            time.sleep(0.1)
        gaps = []
        for k in range(args.kills):
            gap, killed, n_tok = asyncio.run(gap_when_killed(a.base_url, {"b": nodes["b"], "c": nodes["c"]}, 80))
            gaps.append(gap)
            print(f"kill {k + 1}: killed {killed} after 20 tokens; client got {n_tok} tokens; largest gap {gap:.2f} s")
            nodes[killed].stop()
            nodes[killed] = start_mesh_node(tmp, killed, model, "shared")  # rejoins by itself (saved membership)
            deadline = time.time() + 30
            while peer_names(a) != {"b", "c"} and time.time() < deadline:
                time.sleep(0.1)
        print(f"failover gap seen by the client: p50 {p50(gaps):.2f} s, max {max(gaps):.2f} s (target p50 <= 3 s)")
    finally:
        for n in nodes.values():
            n.stop()
        hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

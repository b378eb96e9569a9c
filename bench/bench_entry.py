"""Entry node benchmark: how many requests a second a real entry node authenticates and routes, against
light fake peers (so it measures the entry, not the 2-core engine).

    .venv/bin/python bench/bench_entry.py [--requests 10000] [--concurrency 32] [--peers 2] [--json out.json]
    .venv/bin/python bench/bench_entry.py --hop [--rounds 6] [--per-round 5] [--hop-tokens 64]

Set-up: a real hub (`closedmesh hub`, embedded nats-server with TLS and the entry buckets), --peers light
fake peers (bench_mesh_sim.LightNode: the real mesh protocol, signed announcements through the hub,
sealed requests answered at once with --tokens tokens, no llama.cpp) admitted as hub members, and a real
entry node (`closedmesh entry`) joined with an invite for the entry role; keys made with
`closedmesh keys create`.

The mixed run sends --requests requests (chat completions, half of them streamed with include_usage) with
a key chosen per request: 70 % a valid key without limits, 20 % a missing, malformed or unknown key,
10 % a key limited to --rpm requests a minute. Expected answers: 200 for the valid key; 401 (or 429 from
the bad-key throttle) for the bad ones; 200 or 429 for the limited key. Anything else is an error and is
counted. Reported: requests a second per class and overall, latency p50/p95 per class, the entry
process's RSS after request 1,000 and after the last one, and the usage the entry recorded for the
valid key against what the answers said.

--hop measures the entry hop instead: a real serving node (the default model) joined to the hub, and
single streams of --hop-tokens tokens sent to it directly and through the entry (mesh hop included),
alternating round by round; TTFT p50 and decode tok/s p50 of each way, their ratio and difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import nats
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.bench_mesh_sim as mesh_sim  # noqa: E402
from bench.bench_mesh_sim import LightNode, Sim, dist  # noqa: E402
from runtime.mesh.hub import add_member, load_state  # noqa: E402
from runtime.mesh.identity import Identity  # noqa: E402
from runtime.mesh.protocol import ctl_subject, inbox_prefix, req_subject  # noqa: E402
from runtime.mesh.tls import client_context  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLOSEDMESH = REPO / ".venv" / "bin" / "closedmesh"
MODEL = "fake/bench-model"
PEER_CONCURRENCY = 64  # each fake peer takes this many requests at once (it answers at once anyway)
mesh_sim.MAX_CONCURRENT = PEER_CONCURRENCY
mesh_sim.LIMITS = dict(mesh_sim.LIMITS, max_concurrent=PEER_CONCURRENCY)


class TlsPeer(LightNode):
    """A light fake peer that connects to a real hub (TLS with the hub's pinned certificate)."""

    tls_token: str = ""

    async def start(self) -> None:
        self.nc = await nats.connect(
            servers=[self.sim.url], name=f"closedmesh {self.name}", inbox_prefix=inbox_prefix(self.pub),
            nkeys_seed_str=self.ident.seed, tls=client_context(self.tls_token), allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=10, ping_interval=5,
            max_outstanding_pings=2, error_cb=self._on_error)
        await self.nc.subscribe(req_subject(self.pub), cb=self._on_request)
        await self.nc.subscribe(ctl_subject(self.pub), cb=self._on_ctl)
        await self.nc.flush(timeout=10)
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._announcer()), loop.create_task(self._expirer())]


def _env(home: Path) -> dict:
    return dict(os.environ, CLOSEDMESH_HOME=str(home), PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))


def _wait_log(path: Path, needle: str, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[1]} exited ({proc.returncode}):\n{text[-3000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for '{needle}' in {path}")


def _cli(home: Path, *args: str) -> str:
    r = subprocess.run([str(CLOSEDMESH), *args], env=_env(home), capture_output=True, text=True, timeout=60)
    if r.returncode:
        raise RuntimeError(f"closedmesh {' '.join(args)}: {r.stderr}")
    return r.stdout.strip()


def _start_hub(hub_home: Path, procs: list[subprocess.Popen]) -> int:
    hub_home.mkdir()
    port = _free_port()
    hub = subprocess.Popen([str(CLOSEDMESH), "hub", "--host", "127.0.0.1", "--port", str(port)],
                           stdout=open(hub_home / "hub.log", "w"), stderr=subprocess.STDOUT, env=_env(hub_home),
                           start_new_session=True)
    procs.append(hub)
    _wait_log(hub_home / "hub.log", "ClosedMesh hub listening", hub, 60)
    return port


def _invite(hub_home: Path, role: str = "member") -> str:
    return _cli(hub_home, "mesh", "invite", "--ttl", "1h", "--port", "1", "--role", role)


async def _start_entry(hub_home: Path, entry_home: Path, model: str, procs: list[subprocess.Popen],
                       *extra: str) -> tuple[subprocess.Popen, str]:
    """A real `closedmesh entry` joined with an entry-role invite, once it lists ``model``."""
    entry_home.mkdir()
    entry = subprocess.Popen(
        [str(CLOSEDMESH), "entry", "--mesh", _invite(hub_home, "entry"), "--host", "127.0.0.1", "--port", "0",
         "--admin-port", "0", *extra],
        stdout=open(entry_home / "entry.log", "w"), stderr=subprocess.STDOUT, env=_env(entry_home),
        start_new_session=True)
    procs.append(entry)
    text = _wait_log(entry_home / "entry.log", "serving the OpenAI API on http://", entry, 120)
    eport = int(text.split("serving the OpenAI API on http://", 1)[1].split("/")[0].rsplit(":", 1)[1])
    base = f"http://127.0.0.1:{eport}"
    _wait_log(entry_home / "config" / "entry-admin.json", "url", entry, 60)
    await _wait_model(base, model)
    return entry, base


async def _wait_model(base: str, model: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(base + "/v1/models", timeout=5) as r:
            if any(m["id"] == model for m in json.loads(r.read())["data"]):
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{base} never listed {model}")


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="cm-bench-entry-"))
    procs: list[subprocess.Popen] = []
    peers: list[TlsPeer] = []
    try:
        hub_home, entry_home = tmp / "hub", tmp / "entry"
        port = _start_hub(hub_home, procs)
        hub_dir = hub_home / "data" / "hub"
        tls = load_state(hub_dir)["tls"]
        sim = Sim(f"nats://127.0.0.1:{port}", 15.0, args.tokens, 0.0)
        for i in range(args.peers):
            ident = Identity.generate()
            await asyncio.to_thread(add_member, hub_dir, ident.public, f"fake-{i}")
            models = [{"id": MODEL, "state": "ready", "context_length": 4096, "slots": 64, "free_slots": 64,
                       "queued": 0, "tokens_per_second_p50": 100.0, "ttft_ms_p50": 5}]
            p = TlsPeer(sim, ident, f"fake-{i}", models, random.Random(i))
            p.tls_token = tls
            await p.start()
            peers.append(p)
        entry, base = await _start_entry(hub_home, entry_home, MODEL, procs, "--bad-auth-per-minute",
                                         str(args.bad_auth_per_minute))
        valid = _cli(entry_home, "keys", "create", "--name", "bench-valid")
        limited = _cli(entry_home, "keys", "create", "--name", "bench-limited", "--rpm", str(args.rpm))
        return await _load(args, base, valid, limited, psutil.Process(entry.pid), entry_home)
    finally:
        for p in peers:
            await p.crash()
        _stop_all(procs)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


async def overhead(args) -> dict:
    """The entry hop against calling a real serving node (the default model) directly: single streams,
    the two ways alternating round by round (which goes first alternates too); medians over all rounds."""
    from bench.common import p50, start, stream_chat
    from runtime.models.embedded import ensure_default_model

    tmp = Path(tempfile.mkdtemp(prefix="cm-bench-entry-hop-"))
    procs: list[subprocess.Popen] = []
    server = None
    try:
        hub_home = tmp / "hub"
        _start_hub(hub_home, procs)
        model_path = ensure_default_model(REPO / ".cache" / "models")
        server_home = tmp / "server"
        sport = _free_port()
        server = start("closedmesh", [str(CLOSEDMESH), "serve", "--port", str(sport), "--model", str(model_path),
                                      "--slots", "2", "--ctx-per-slot", "1024", "--threads", str(args.threads)],
                       sport, "/health", env={"CLOSEDMESH_HOME": str(server_home)})
        token = (server_home / "config" / "admin-token").read_text().strip()
        req = urllib.request.Request(server.url + "/api/mesh/join", method="POST",
                                     data=json.dumps({"invite": _invite(hub_home), "name": "server"}).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=60).close()
        model = "SmolLM2-135M-Instruct"
        entry_home = tmp / "entry"
        _, base = await _start_entry(hub_home, entry_home, model, procs)
        key = _cli(entry_home, "keys", "create", "--name", "bench-hop")
        prompt = "Write a short story about a lighthouse keeper."
        res: dict[str, dict[str, list[float]]] = {w: {"ttft_ms": [], "tps": []} for w in ("direct", "entry")}
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"},
                                         timeout=aiohttp.ClientTimeout(total=300)) as session:
            await stream_chat(session, server.url, prompt, 8, model)  # warm-up, both ways
            await stream_chat(session, base, prompt, 8, model)
            for r in range(args.rounds):
                ways = [("direct", server.url), ("entry", base)]
                for way, url in ways if r % 2 == 0 else ways[::-1]:
                    for _ in range(args.per_round):
                        s = await stream_chat(session, url, prompt, args.hop_tokens, model)
                        if s.error:
                            raise RuntimeError(f"{way}: {s.error}")
                        res[way]["ttft_ms"].append(s.ttft * 1000)
                        if s.decode_tps:
                            res[way]["tps"].append(s.decode_tps)
        out = {w: {"ttft_ms_p50": round(p50(v["ttft_ms"]), 1), "tps_p50": round(p50(v["tps"]), 1),
                   "n": len(v["ttft_ms"])} for w, v in res.items()}
        return {
            "config": {"rounds": args.rounds, "per_round": args.per_round, "tokens": args.hop_tokens,
                       "threads": args.threads, "cpus": os.cpu_count(),
                       "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
            **out,
            "tps_ratio_entry_to_direct": round(out["entry"]["tps_p50"] / out["direct"]["tps_p50"], 3),
            "ttft_added_ms_p50": round(out["entry"]["ttft_ms_p50"] - out["direct"]["ttft_ms_p50"], 1),
        }
    finally:
        if server is not None:
            server.stop()
        _stop_all(procs)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def _load(args, base: str, valid: str, limited: str, ps: psutil.Process, entry_home: Path) -> dict:
    rng = random.Random(args.seed)
    bad = [None, "Bearer nonsense", "Bearer cm_" + "Q" * 43, "Basic abc"]
    plan = []
    for _ in range(args.requests):
        r = rng.random()
        kind = "valid" if r < 0.7 else "invalid" if r < 0.9 else "limited"
        auth = f"Bearer {valid}" if kind == "valid" else f"Bearer {limited}" if kind == "limited" else rng.choice(bad)
        plan.append((kind, auth, rng.random() < 0.5))
    expected = {"valid": {200}, "invalid": {401, 429}, "limited": {200, 429}}
    lat: dict[str, list[float]] = {"valid": [], "invalid": [], "limited": []}
    codes: dict[str, dict[int, int]] = {k: {} for k in lat}
    errors: list[str] = []
    usage_seen = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
    rss: dict[int, int] = {}
    done = 0
    nxt = 0
    t_start = time.perf_counter()

    async def one(session: aiohttp.ClientSession, kind: str, auth: str | None, stream: bool) -> None:
        nonlocal done
        headers = {"Authorization": auth} if auth else {}
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": args.tokens}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        t0 = time.perf_counter()
        async with session.post(base + "/v1/chat/completions", json=body, headers=headers) as resp:
            raw = await resp.read()
            status = resp.status
        lat[kind].append(time.perf_counter() - t0)
        codes[kind][status] = codes[kind].get(status, 0) + 1
        if status not in expected[kind]:
            errors.append(f"{kind}: {status} {raw[:200]!r}")
        elif status == 200 and kind == "valid":
            if stream:
                events = [ln[6:] for ln in raw.decode().splitlines() if ln.startswith("data: ")]
                if events[-1] != "[DONE]":
                    errors.append("valid stream without [DONE]")
                u = json.loads(events[-2])["usage"]
                if u is None:
                    errors.append(f"valid stream without usage: {raw[-600:]!r}")
                    u = {"prompt_tokens": 0, "completion_tokens": 0}
            else:
                u = json.loads(raw)["usage"]
            usage_seen["prompt_tokens"] += u["prompt_tokens"]
            usage_seen["completion_tokens"] += u["completion_tokens"]
            usage_seen["requests"] += 1
        done += 1
        if done % 1000 == 0 or done == args.requests:
            rss[done] = ps.memory_info().rss

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal nxt
        while nxt < len(plan):
            i = nxt
            nxt += 1
            await one(session, *plan[i])

    conn = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - t_start
    # The usage the entry recorded for the valid key (written after each answer: wait for the last ones).
    token = (entry_home / "config" / "admin-token").read_text().strip()
    admin = json.loads((entry_home / "config" / "entry-admin.json").read_text())["url"]
    recorded: dict = {}
    for _ in range(100):
        req = urllib.request.Request(admin + "/admin/keys/bench-valid/usage",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            recorded = json.loads(r.read())["usage"]
        if recorded["requests"] >= usage_seen["requests"]:
            break
        await asyncio.sleep(0.1)
    return {
        "config": {"requests": args.requests, "concurrency": args.concurrency, "peers": args.peers,
                   "tokens": args.tokens, "rpm": args.rpm, "cpus": os.cpu_count(),
                   "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(args.requests / elapsed, 1),
        "by_kind": {k: {"n": len(v), "codes": codes[k], "latency_ms": dist(v, 1000)} for k, v in lat.items()},
        "unexpected": len(errors),
        "unexpected_first": errors[:5],
        "rss_mb": {str(k): round(v / 2**20, 1) for k, v in sorted(rss.items())},
        "rss_growth_1000_to_last": round(rss[args.requests] / rss[1000] - 1, 4) if 1000 in rss else None,
        "usage_answers": usage_seen,
        "usage_recorded": recorded,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--peers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=8, help="tokens per fake answer")
    ap.add_argument("--rpm", type=int, default=60, help="the limited key's requests a minute")
    ap.add_argument("--bad-auth-per-minute", type=float, default=1e9,
                    help="the entry's bad-key throttle (default: off, so the run measures authentication)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hop", action="store_true",
                    help="measure the entry hop instead: TTFT and tok/s through the entry vs a real node directly")
    ap.add_argument("--rounds", type=int, default=6, help="--hop: alternating rounds")
    ap.add_argument("--per-round", type=int, default=5, help="--hop: streams per way and round")
    ap.add_argument("--hop-tokens", type=int, default=64, help="--hop: tokens per stream")
    ap.add_argument("--threads", type=int, default=2, help="--hop: the serving node's threads")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()
    report = asyncio.run(overhead(args) if args.hop else run(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    if report.get("unexpected"):
        sys.exit(1)


if __name__ == "__main__":
    main()

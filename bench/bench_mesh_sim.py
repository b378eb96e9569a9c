"""Mesh simulation: N light nodes (default 200) on one nats-server on this machine.

    .venv/bin/python bench/bench_mesh_sim.py [--nodes 200] [--wave 20] [--leave 20] [--crash 10] [--json out.json]

Every light node is the real mesh protocol with a fake engine: its own NKey identity and nats-py
connection (inbox prefix _I.<id>), under the per-node permissions of the real hub config
(runtime.mesh.hub.render_config / node_permissions, nkey users, JetStream KV bucket "closedmesh" created
as Hub.start does); a signed announcement (protocol.sign_announcement) refreshed every REFRESH_INTERVAL;
announcements sent through the hub's directory writer (runtime.mesh.hub.DirectoryRelay, on the admin
connection, as Hub.start runs it); the directory watch of the real nodes (runtime.mesh.watch.DirectoryWatch:
a subscription to the directory's subjects plus the hub's snapshot, no JetStream rights) feeding its own
runtime.mesh.directory.Directory, expired every second (watch.keep_watching / expire_peers, as a node
runs them); requests answered on cm.n.<id>.req like mesh.serving.Serving (check_request, then sealed
"ack", "start", K tokens and "done"), and signed requests sent like mesh.link.NatsLink to the peer that
rank_peers puts first. No
llama.cpp: the fake engine answers as fast as it can (--token-ms adds a delay per token).

Measured in one run: join convergence (the first wave of N, then a wave of --wave newcomers), leave
convergence (--leave nodes delete their entry), crash convergence (--crash nodes drop their connection
without deleting; peers expire them after the announcement's TTL, the real 15 s unless --ttl), routing
latency (request to first token and to done, concurrency 1 and --concurrency) and rank_peers' own cost,
the nats-server's messages/s, CPU and RSS, and this process's CPU (all N nodes share it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nats
import psutil
from nats.js.api import KeyValueConfig, StorageType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port  # noqa: E402
from runtime import __version__  # noqa: E402
import runtime.mesh.directory as directory_mod  # noqa: E402
from runtime.mesh.directory import Directory  # noqa: E402
from runtime.mesh.hub import DirectoryRelay, nats_server_binary, render_config  # noqa: E402
from runtime.mesh.identity import Identity  # noqa: E402
from runtime.mesh.protocol import (  # noqa: E402
    ANNOUNCE_TTL, BUCKET, HEARTBEAT_INTERVAL, LIVENESS_TIMEOUT, REFRESH_INTERVAL, JunkRequest, announce_subject,
    check_request,
    ctl_subject, inbox_prefix, open_announcement, req_subject, request_headers, seal, seal_request,
    sign_announcement, unseal,
)
from runtime.engine.events import Finished, Started, Text  # noqa: E402
from runtime.mesh import wire  # noqa: E402
from runtime.mesh.router import rank_peers  # noqa: E402
from runtime.mesh.watch import DirectoryWatch, expire_peers, keep_watching  # noqa: E402

MODEL_POOL = [f"fake/model-{i:02d}" for i in range(20)]
MAX_CONCURRENT = 4  # MeshLimits.max_concurrent
LIMITS = {"max_tokens": 2048, "max_concurrent": MAX_CONCURRENT, "reserved_local_slots": 1}


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def dist(xs: list[float], scale: float = 1.0) -> dict:
    return {"n": len(xs), "p50": _r(pct(xs, 50), scale), "p95": _r(pct(xs, 95), scale),
            "max": _r(max(xs) if xs else None, scale)}


def _r(v, scale):
    return None if v is None else round(v * scale, 3)


# -- one signature check per announcement per process ------------------------------------------------------
#
# Every node checks the signature of every announcement it receives: (N-1)/REFRESH_INTERVAL checks a
# second per node, cheap for one node (see the cost measured in `per_update_cost`) but N times that for
# the one process that runs all N simulated nodes (200 nodes: ~8,000 checks/s, more than this machine's
# two cores). By default the simulation checks each distinct announcement once and hands the checked
# body to the other watchers of the same bytes (the result is a function of the bytes alone);
# --verify-every-copy makes every node check every copy, as real nodes do.

_checked: dict[tuple[str, bytes], dict] = {}


def open_announcement_once(key: str, raw: bytes) -> dict:
    hit = _checked.get((key, raw))
    if hit is None:
        hit = open_announcement(key, raw)  # raises BadAnnouncement, which is not cached
        if len(_checked) > 20_000:
            _checked.clear()
        _checked[(key, raw)] = hit
    return hit


def per_update_cost(node: "LightNode", reps: int = 500) -> dict:
    """What one real node spends on one directory refresh it receives: Directory.apply with the
    signature check (json, canonical form, NKey decoding, Ed25519), microseconds."""
    raws = [sign_announcement(node.ident, node.announcement()) for _ in range(reps)]
    d = Directory("bench")
    ts = []
    patched, directory_mod.open_announcement = directory_mod.open_announcement, open_announcement
    try:
        for raw in raws:
            t0 = time.perf_counter()
            d.apply(node.pub, raw)
            ts.append(time.perf_counter() - t0)
    finally:
        directory_mod.open_announcement = patched
    return {"bytes": len(raws[0]), "us": dist(ts, 1e6)}


# -- convergence tracking -------------------------------------------------------------------------------


class Phase:
    """Per node: the peers it still has to see (join) or to drop (leave, crash); the time it got there."""

    def __init__(self, name: str, kind: str, t0: float, waiting: dict[str, set[str]]) -> None:
        self.name, self.kind, self.t0 = name, kind, t0
        self.waiting = waiting  # node id -> ids still to be seen / dropped
        self.done: dict[str, float] = {}
        self.all_done = asyncio.Event()
        for nid, s in list(waiting.items()):
            if not s:
                self._finish(nid, t0)

    def _finish(self, nid: str, now: float) -> None:
        self.waiting.pop(nid, None)
        self.done[nid] = now - self.t0
        if not self.waiting:
            self.all_done.set()

    def update(self, node: "LightNode", keys) -> None:
        s = self.waiting.get(node.pub)
        if s is None:
            return
        peers = node.directory.peers
        for k in keys:
            if k in s and ((k in peers) if self.kind == "join" else (k not in peers)):
                s.discard(k)
        if not s:
            self._finish(node.pub, time.monotonic())


@dataclass
class Sim:
    url: str
    ttl: float
    tokens: int
    token_ms: float
    phase: Phase | None = None
    quiet: bool = False  # announcers skip their refreshes (a short window, well under the TTL)
    lag_samples: list[float] | None = None  # put → applied at a watcher (steady state), seconds
    directory_events: int = 0
    watch_restarts: int = 0
    rejected: int = 0
    busy_refusals: int = 0
    served: int = 0


@dataclass
class LightNode:
    sim: Sim
    ident: Identity
    name: str
    models: list[dict]
    rng: random.Random
    directory: Directory = None  # type: ignore[assignment]
    nc: nats.NATS | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    served: set[str] = field(default_factory=set)
    in_flight: dict[str, int] = field(default_factory=dict)
    stopping: bool = False

    def __post_init__(self) -> None:
        self.pub = self.ident.public
        self.directory = Directory(self.pub)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        # The options of membership.Membership._connect, with this node's own key (hub mode).
        self.nc = await nats.connect(
            servers=[self.sim.url], name=f"closedmesh {self.name}", inbox_prefix=inbox_prefix(self.pub),
            nkeys_seed_str=self.ident.seed, allow_reconnect=True, max_reconnect_attempts=-1,
            reconnect_time_wait=0.5, connect_timeout=10, ping_interval=5, max_outstanding_pings=2,
            error_cb=self._on_error)
        await self.nc.subscribe(req_subject(self.pub), cb=self._on_request)
        await self.nc.subscribe(ctl_subject(self.pub), cb=self._on_ctl)
        await self.nc.flush(timeout=10)
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._announcer()), loop.create_task(self._watcher()),
                      loop.create_task(self._expirer())]

    async def leave(self) -> None:
        """membership.Membership._disconnect(delete_entry=True): delete the entry, drain, close."""
        self._stop_tasks()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.publish(announce_subject(self.pub), b""), 2)  # through the hub
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.drain(), 3)
        with contextlib.suppress(Exception):
            await self.nc.close()

    async def crash(self) -> None:
        """The process dies: the connection goes, the directory entry stays until it ages out."""
        self._stop_tasks()
        with contextlib.suppress(Exception):
            await self.nc.close()

    def _stop_tasks(self) -> None:
        self.stopping = True
        for t in self.tasks:
            t.cancel()

    async def _on_error(self, e: Exception) -> None:
        if "permissions violation" in str(e).lower():
            print(f"  ! {self.name}: {e}", file=sys.stderr)

    # -- announcing -----------------------------------------------------------------------------------

    def announcement(self) -> dict:
        free = sum(m["free_slots"] for m in self.models)
        return {"name": self.name, "version": __version__, "ts": time.time(), "ttl": self.sim.ttl,
                "capability": {"backend": "fake", "devices": [], "ram_total_bytes": 8 * 2**30},
                "models": self.models, "free_slots": free, "queued": 0, "limits": LIMITS}

    async def announce(self) -> None:
        # announcer.Announcer.write_entry on a private hub (without its flush): the hub checks it and
        # writes it into the bucket
        await self.nc.publish(announce_subject(self.pub), sign_announcement(self.ident, self.announcement()))

    async def _announcer(self) -> None:
        # First announcement at once on joining, then every REFRESH_INTERVAL (announcer.Announcer.run). The
        # nodes of a wave join in the same second; the first refresh comes at a random point of the
        # interval so that the refreshes spread as they do for nodes that joined at different times.
        first = True
        while True:
            try:
                if not self.sim.quiet or first:
                    await self.announce()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not self.stopping:
                    print(f"  ! {self.name}: announce failed: {type(e).__name__} {e}", file=sys.stderr)
            await asyncio.sleep(REFRESH_INTERVAL * (self.rng.random() if first else 1))
            first = False

    # -- the directory --------------------------------------------------------------------------------

    async def _watcher(self) -> None:
        """The real watch (watch.DirectoryWatch, kept running by watch.keep_watching as a node does), plus
        the convergence bookkeeping."""
        sim = self.sim
        node = self

        class Watch(DirectoryWatch):
            async def _on_msg(self, msg) -> None:
                sim.directory_events += 1
                await super()._on_msg(msg)
                key = msg.subject.rsplit(".", 1)[-1]
                if sim.lag_samples is not None and not msg.headers:
                    p = node.directory.peers.get(key)
                    if p is not None:
                        sim.lag_samples.append(time.time() - float(p.announcement.get("ts") or 0))

        def changed(keys) -> None:
            if sim.phase:
                sim.phase.update(node, list(keys))

        def interrupted(e: Exception) -> None:
            sim.watch_restarts += 1
            print(f"  ! {self.name}: directory watch interrupted ({type(e).__name__} {e})", file=sys.stderr)

        await keep_watching(Watch(self.nc, self.directory, changed, hub=True), interrupted)

    async def _expirer(self) -> None:
        """The real expiry (watch.expire_peers), started at a random point of the second: nodes start at
        different times."""
        await asyncio.sleep(self.rng.random())

        def gone(keys: list[str]) -> None:
            if self.sim.phase:
                self.sim.phase.update(self, keys)

        await expire_peers(self.directory, gone)

    # -- serving (the fake engine) --------------------------------------------------------------------

    async def _send(self, reply: str, key: bytes, m: dict) -> None:
        with contextlib.suppress(Exception):
            await self.nc.publish(reply, seal(key, m))

    async def _on_ctl(self, msg) -> None:
        pass  # the fake engine finishes at once; nothing to cancel

    async def _on_request(self, msg) -> None:
        if not msg.data:
            return  # a liveness probe
        try:
            _, req, key = check_request(self.ident, msg.reply, msg.headers, msg.data)
            rid = req["rid"]
        except JunkRequest:
            return
        asyncio.get_running_loop().create_task(self._serve(rid, key, msg.reply, req))

    async def _serve(self, rid: str, key: bytes, reply: str, req: dict) -> None:
        if len(self.served) >= MAX_CONCURRENT:
            self.sim.busy_refusals += 1
            await self._send(reply, key, {"t": "err", "status": 503, "error": {
                "message": "this peer is serving as many mesh requests as its owner allows",
                "type": "server_error", "code": "peer_busy"}})
            return
        self.served.add(rid)
        self.sim.served += 1
        last = [time.monotonic()]

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_INTERVAL / 2)
                if time.monotonic() - last[0] >= HEARTBEAT_INTERVAL:
                    last[0] = time.monotonic()
                    await self._send(reply, key, {"t": "hb"})

        beat = asyncio.get_running_loop().create_task(heartbeat()) if self.sim.token_ms else None
        try:
            await self._send(reply, key, {"t": "ack"})
            body = req.get("body") or {}
            await self._send(reply, key, wire.encode_started(Started(prompt_tokens=12, model=body.get("model"))))
            n = int(body.get("max_tokens") or self.sim.tokens)
            for i in range(1, n + 1):
                if self.sim.token_ms:
                    await asyncio.sleep(self.sim.token_ms / 1000)
                last[0] = time.monotonic()
                await self._send(reply, key, wire.encode_texts([Text("tok")], i))
            await self._send(reply, key, wire.encode_finished(Finished(
                finish_reason="length", prompt_tokens=12, completion_tokens=n, cached_tokens=0)))
        finally:
            if beat is not None:
                beat.cancel()
            self.served.discard(rid)

    # -- requesting -----------------------------------------------------------------------------------

    async def request(self, model: str) -> dict:
        """requester.Requester.generate over link.NatsLink in short: rank, send the sealed request to the
        best peer, read its sealed stream; on a refusal try the next peer. Times in seconds from the start (ranking included)."""
        t0 = time.perf_counter()
        ranked = rank_peers(list(self.directory.peers.values()), model, self.in_flight)
        t_rank = time.perf_counter() - t0
        if not ranked:
            return {"ok": False, "why": "no peer", "rank": t_rank}
        tries = 0
        for peer in ranked[:4]:
            tries += 1
            rid = uuid.uuid4().hex
            sealed, key = seal_request(peer.id, {
                "rid": rid, "kind": "chat", "prefix": "", "from": self.pub,
                "body": {"model": model, "messages": [{"role": "user", "content": "hello"}],
                         "max_tokens": self.sim.tokens}})
            inbox = self.nc.new_inbox()
            sub = await self.nc.subscribe(inbox, pending_msgs_limit=-1)
            self.in_flight[peer.id] = self.in_flight.get(peer.id, 0) + 1
            t_ack = t_first = None
            try:
                await self.nc.publish(req_subject(peer.id), sealed, reply=inbox,
                                      headers=request_headers(self.ident, inbox, sealed, rid))
                while True:
                    try:
                        msg = await sub.next_msg(timeout=LIVENESS_TIMEOUT)
                    except Exception:
                        return {"ok": False, "why": "peer silent", "rank": t_rank, "tries": tries}
                    if msg.headers and msg.headers.get("Status") == "503":
                        break  # no responder: next peer
                    try:
                        m = unseal(key, msg.data)
                    except ValueError:
                        continue
                    t = m.get("t")
                    now = time.perf_counter() - t0
                    if t == "ack":
                        t_ack = now
                    elif t == "err":
                        break  # peer_busy: next peer
                    elif t == "d" and t_first is None:
                        t_first = now
                    elif t == "done":
                        return {"ok": True, "rank": t_rank, "ack": t_ack, "first": t_first, "done": now,
                                "tries": tries}
            finally:
                self.in_flight[peer.id] = max(0, self.in_flight.get(peer.id, 1) - 1)
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        return {"ok": False, "why": "refused", "rank": t_rank, "tries": tries}


# -- the nats-server ------------------------------------------------------------------------------------


class Server:
    def __init__(self, tmp: Path, admin: Identity, members: list[Identity]) -> None:
        self.port, self.mport = free_port(), free_port()
        state = {"admin": admin.public, "host": "127.0.0.1", "port": self.port,
                 "members": {m.public: {"name": f"sim-{i}", "joined_at": time.time()} for i, m in enumerate(members)},
                 "revoked": {}, "invites": {}}
        cfg = render_config(state, tmp)  # the hub's own config: nkey users with node_permissions
        cfg["http"] = f"127.0.0.1:{self.mport}"  # monitoring endpoint, for /varz message counts only
        self.conf = tmp / "nats-server.conf"
        self.conf.write_text(json.dumps(cfg, indent=1))
        self.log = Path(cfg["log_file"])
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)
        self.url = f"nats://127.0.0.1:{self.port}"

    def varz(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.mport}/varz", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Meter:
    """Server messages/s, server and Python CPU over a window."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.me = psutil.Process()

    async def snap(self) -> dict:
        v = await asyncio.to_thread(self.srv.varz)
        st, mt = self.srv.ps.cpu_times(), self.me.cpu_times()
        return {"t": time.monotonic(), "in": v["in_msgs"], "out": v["out_msgs"], "in_b": v["in_bytes"],
                "out_b": v["out_bytes"], "srv_cpu": st.user + st.system, "py_cpu": mt.user + mt.system,
                "srv_rss": self.srv.ps.memory_info().rss, "py_rss": self.me.memory_info().rss}

    @staticmethod
    def window(a: dict, b: dict) -> dict:
        dt = b["t"] - a["t"]
        return {"seconds": round(dt, 2), "in_msgs_s": round((b["in"] - a["in"]) / dt),
                "out_msgs_s": round((b["out"] - a["out"]) / dt),
                "out_kib_s": round((b["out_b"] - a["out_b"]) / dt / 1024),
                "server_cpu_pct": round(100 * (b["srv_cpu"] - a["srv_cpu"]) / dt, 1),
                "python_cpu_pct": round(100 * (b["py_cpu"] - a["py_cpu"]) / dt, 1),
                "server_rss_mib": round(b["srv_rss"] / 2**20, 1), "python_rss_mib": round(b["py_rss"] / 2**20, 1)}


# -- the run --------------------------------------------------------------------------------------------


def make_node(sim: Sim, i: int, rng: random.Random) -> LightNode:
    models = []
    for mid in rng.sample(MODEL_POOL, rng.randint(1, 3)):
        slots = rng.choice([2, 4, 8])
        models.append({"id": mid, "state": "ready", "context_length": 4096, "slots": slots,
                       "free_slots": rng.randint(0, min(slots - 1, MAX_CONCURRENT)), "queued": 0,
                       "tokens_per_second_p50": round(rng.uniform(5, 120), 1),
                       "ttft_ms_p50": round(rng.uniform(40, 900))})
    return LightNode(sim, Identity.generate(), f"sim-{i:04d}", models, random.Random(rng.random()))


async def join_wave(sim: Sim, name: str, joiners: list[LightNode], live: list[LightNode], timeout: float) -> dict:
    """Start ``joiners``; per node of ``live`` (which includes them): time until its directory holds every
    other live node."""
    everyone = {n.pub for n in live}
    t0 = time.monotonic()
    sim.phase = Phase(name, "join", t0, {n.pub: (everyone - {n.pub}) - set(n.directory.peers) for n in live})
    connect_times: list[float] = []

    async def start(n: LightNode) -> None:
        await n.start()
        connect_times.append(time.monotonic() - t0)

    results = await asyncio.gather(*(start(n) for n in joiners), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for r in failed[:3]:
        print(f"  ! join failed: {type(r).__name__} {r}", file=sys.stderr)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(sim.phase.all_done.wait(), timeout)
    ph, sim.phase = sim.phase, None
    new = {n.pub for n in joiners}
    out = {"nodes": len(live), "joining": len(joiners), "failed_to_connect": len(failed),
           "connected_s": dist(connect_times),
           "converged_s": dist(list(ph.done.values())), "not_converged": len(ph.waiting)}
    if len(new) < len(live):
        out["old_nodes_see_newcomers_s"] = dist([v for k, v in ph.done.items() if k not in new])
        out["newcomers_see_all_s"] = dist([v for k, v in ph.done.items() if k in new])
    return out


async def drop_wave(sim: Sim, name: str, kind: str, goers: list[LightNode], stay: list[LightNode],
                    timeout: float) -> dict:
    gone = {n.pub for n in goers}
    t0 = time.monotonic()
    sim.phase = Phase(name, kind, t0, {n.pub: gone & set(n.directory.peers) for n in stay})
    await asyncio.gather(*((n.leave() if kind == "leave" else n.crash()) for n in goers), return_exceptions=True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(sim.phase.all_done.wait(), timeout)
    ph, sim.phase = sim.phase, None
    return {"nodes": len(stay), kind: len(goers), "converged_s": dist(list(ph.done.values())),
            "not_converged": len(ph.waiting)}


async def routing(nodes: list[LightNode], concurrency: int, total: int, rng: random.Random) -> dict:
    results: list[dict] = []

    async def worker(k: int) -> None:
        for _ in range(k):
            n = rng.choice(nodes)
            served = list(n.directory.mesh_models())
            if not served:
                continue
            results.append(await n.request(rng.choice(served)))

    per, extra = divmod(total, concurrency)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(per + (1 if i < extra else 0)) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    return {"concurrency": concurrency, "requests": len(results), "ok": len(ok),
            "failed": {w: sum(1 for r in results if not r["ok"] and r["why"] == w)
                       for w in {r["why"] for r in results if not r["ok"]}},
            "retried": sum(1 for r in ok if r["tries"] > 1), "requests_s": round(len(results) / wall, 1),
            "first_token_ms": dist([r["first"] for r in ok], 1000), "done_ms": dist([r["done"] for r in ok], 1000),
            "ack_ms": dist([r["ack"] for r in ok if r["ack"] is not None], 1000)}


def time_rank_peers(node: LightNode, rng: random.Random, reps: int = 2000) -> dict:
    peers = list(node.directory.peers.values())
    ts = []
    for _ in range(reps):
        mid = rng.choice(MODEL_POOL)
        t0 = time.perf_counter()
        rank_peers(peers, mid, node.in_flight)
        ts.append(time.perf_counter() - t0)
    return {"peers": len(peers), "us": dist(ts, 1e6)}


async def run(args) -> dict:
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="cm-mesh-sim-"))
    admin = Identity.generate()
    sim = Sim("", args.ttl, args.tokens, args.token_ms)
    first = [make_node(sim, i, rng) for i in range(args.nodes)]
    second = [make_node(sim, args.nodes + i, rng) for i in range(args.wave)]
    srv = Server(tmp, admin, [n.ident for n in first + second])
    sim.url = srv.url
    all_nodes = first + second
    report: dict = {"config": {"nodes": args.nodes, "wave": args.wave, "leave": args.leave, "crash": args.crash,
                               "ttl_s": args.ttl, "refresh_s": REFRESH_INTERVAL, "tokens": args.tokens,
                               "token_ms": args.token_ms, "concurrency": args.concurrency,
                               "cpus": os.cpu_count(), "nats_server": None, "models": len(MODEL_POOL),
                               "verify_every_copy": args.verify_every_copy,
                               "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}}
    admin_nc = None
    try:
        deadline = time.monotonic() + 20
        while True:
            if srv.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited at start (code {srv.proc.returncode}); see {srv.log}")
            try:
                admin_nc = await nats.connect(srv.url, nkeys_seed_str=admin.seed, allow_reconnect=False,
                                              connect_timeout=2, error_cb=_quiet)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        report["config"]["nats_server"] = (await asyncio.to_thread(srv.varz)).get("version")
        js = admin_nc.jetstream()
        kv = await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1, ttl=ANNOUNCE_TTL * 2,
                                                      storage=StorageType.FILE))  # as Hub.start
        await DirectoryRelay(admin_nc, kv).start()  # the hub's writer of the directory, as Hub.start
        meter = Meter(srv)
        base = await meter.snap()
        idle_rss = base["srv_rss"]

        def say(s: str) -> None:
            print(s, file=sys.stderr, flush=True)

        say(f"joining {args.nodes} nodes ...")
        a = await meter.snap()
        report["join"] = await join_wave(sim, "join", first, first, args.timeout)
        report["join"]["load"] = Meter.window(a, await meter.snap())
        say(f"  {report['join']['converged_s']}")

        # Steady state: every node refreshes every REFRESH_INTERVAL, every watcher gets every refresh.
        await asyncio.sleep(REFRESH_INTERVAL)
        say(f"steady state, {args.steady:.0f} s ...")
        sim.lag_samples = []
        ev0 = sim.directory_events
        a = await meter.snap()
        await asyncio.sleep(args.steady)
        b = await meter.snap()
        lag, sim.lag_samples = sim.lag_samples, None
        applied = round((sim.directory_events - ev0) / (b["t"] - a["t"]))
        report["steady"] = dict(Meter.window(a, b), directory_updates_applied_s=applied,
                                expected_updates_s=round(args.nodes * (args.nodes - 1) / REFRESH_INTERVAL),
                                propagation_ms=dist(lag, 1000), server_rss_idle_mib=round(idle_rss / 2**20, 1))

        report["rank_peers"] = time_rank_peers(first[0], rng)
        report["directory_update_cost"] = per_update_cost(first[0])
        say("routing ...")
        report["routing"] = []
        # Concurrency 1 also with the directory quiet for a moment (no refreshes: the request path
        # alone, without the other 199 nodes' directory work on the same event loop).
        for c, total, quiet in ((1, args.requests, True), (1, args.requests, False),
                                (args.concurrency, args.requests * 4, False)):
            sim.quiet = quiet
            if quiet:
                await asyncio.sleep(1)  # refreshes already sent are applied
            a = await meter.snap()
            r = await routing(first, c, total, rng)
            r["load"] = Meter.window(a, await meter.snap())
            sim.quiet = False
            r["directory_quiet"] = quiet
            report["routing"].append(r)
            say(f"  c={c}{' (directory quiet)' if quiet else ''}: {r['first_token_ms']} {r['done_ms']}")

        live = list(first)
        if args.wave:
            say(f"join wave +{args.wave} ...")
            live += second
            report["join_wave"] = await join_wave(sim, "join_wave", second, live, args.timeout)
            say(f"  {report['join_wave']['converged_s']}")
        if args.leave:
            goers = rng.sample(live, args.leave)
            live = [n for n in live if n not in goers]
            say(f"{args.leave} nodes leave ...")
            report["leave"] = await drop_wave(sim, "leave", "leave", goers, live, args.timeout)
            say(f"  {report['leave']['converged_s']}")
        if args.crash:
            goers = rng.sample(live, args.crash)
            live = [n for n in live if n not in goers]
            say(f"{args.crash} nodes crash (expiry after the {args.ttl:g} s TTL) ...")
            report["crash"] = await drop_wave(sim, "crash", "crash", goers, live, args.ttl + REFRESH_INTERVAL + 15)
            say(f"  {report['crash']['converged_s']}")
        end = await meter.snap()
        report["totals"] = {"server_rss_peak_mib": round(max(srv.ps.memory_info().rss, end["srv_rss"]) / 2**20, 1),
                            "python_rss_mib": round(end["py_rss"] / 2**20, 1),
                            "directory_updates_applied": sim.directory_events, "watch_restarts": sim.watch_restarts,
                            "announcements_rejected": sum(n.directory.rejected for n in all_nodes),
                            "requests_served": sim.served, "busy_refusals": sim.busy_refusals,
                            "permission_violations_in_server_log": _count(srv.log, " Violation")}
        return report
    finally:
        await asyncio.gather(*(n.crash() for n in all_nodes if n.nc is not None and not n.nc.is_closed),
                             return_exceptions=True)
        if admin_nc is not None:
            with contextlib.suppress(Exception):
                await admin_nc.close()
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _quiet(e: Exception) -> None:
    pass


def _count(path: Path, needle: str) -> int:
    try:
        return sum(1 for line in path.read_text(errors="replace").splitlines() if needle in line)
    except OSError:
        return -1


def render(r: dict) -> str:
    c = r["config"]
    out = [f"Mesh simulation: {c['nodes']} light nodes (+{c['wave']}), one nats-server {c['nats_server']}, "
           f"{c['cpus']} CPUs, TTL {c['ttl_s']:g} s, refresh {c['refresh_s']:g} s, {c['models']} fake models, "
           f"{c['tokens']} tokens per answer; load average at start {c['load_average_at_start']}", ""]

    def d(x: dict, unit: str = "s") -> str:
        return f"{x['p50']} / {x['p95']} / {x['max']} {unit}" if x["n"] else "-"

    def row(*cells) -> str:
        return "| " + " | ".join(str(x) for x in cells) + " |"

    out += ["| convergence | nodes | p50 / p95 / max | not converged |", "|---|---|---|---|"]
    j = r["join"]
    out.append(row(f"join: {c['nodes']} nodes at once (every directory complete)", j["nodes"], d(j["converged_s"]),
                   j["not_converged"]))
    if "join_wave" in r:
        w = r["join_wave"]
        k = w["joining"]
        out.append(row(f"join wave +{k}: old nodes see the newcomers", w["nodes"] - k,
                       d(w["old_nodes_see_newcomers_s"]), ""))
        out.append(row(f"join wave +{k}: newcomers see everyone", k, d(w["newcomers_see_all_s"]), ""))
        out.append(row(f"join wave +{k}: all", w["nodes"], d(w["converged_s"]), w["not_converged"]))
    if "leave" in r:
        x = r["leave"]
        out.append(row(f"leave: {x['leave']} nodes delete their entry", x["nodes"], d(x["converged_s"]),
                       x["not_converged"]))
    if "crash" in r:
        x = r["crash"]
        bound = f"{c['ttl_s'] - c['refresh_s']:g}…{c['ttl_s'] + 1:g} s"
        out.append(row(f"crash: {x['crash']} nodes vanish (TTL {c['ttl_s']:g} s; expected {bound})", x["nodes"],
                       d(x["converged_s"]), x["not_converged"]))
    out.append(f"\nnodes connected (first wave): {d(j['connected_s'])}")
    s = r["steady"]
    out += ["", "| routing | requests | ok | retried | req/s | ack ms p50/p95 | first token ms p50/p95 | "
                "done ms p50/p95 |", "|---|---|---|---|---|---|---|---|"]

    def pp(x: dict) -> str:
        return f"{x['p50']} / {x['p95']}"

    for x in r["routing"]:
        out.append(row(f"concurrency {x['concurrency']}{', directory quiet' if x['directory_quiet'] else ''}",
                       x["requests"], x["ok"], x["retried"], x["requests_s"], pp(x["ack_ms"]),
                       pp(x["first_token_ms"]), pp(x["done_ms"])))
    rp = r["rank_peers"]
    out.append(f"\nrank_peers over {rp['peers']} peers: p50 {rp['us']['p50']} µs, p95 {rp['us']['p95']} µs")
    uc = r["directory_update_cost"]
    out.append(f"one directory update at one node (Directory.apply with the signature check, {uc['bytes']} B "
               f"announcement): p50 {uc['us']['p50']} µs, p95 {uc['us']['p95']} µs"
               + ("" if c["verify_every_copy"] else "; the simulation checks each announcement once per process"))
    out += ["", "| load | server in msg/s | server out msg/s | out KiB/s | nats-server CPU | Python CPU (all nodes) "
                "| nats-server RSS |", "|---|---|---|---|---|---|---|"]
    rows = [("join", j["load"]), ("steady state", s)] + [
        (f"routing c={x['concurrency']}{', quiet' if x['directory_quiet'] else ''}", x["load"]) for x in r["routing"]]
    for name, x in rows:
        out.append(f"| {name} | {x['in_msgs_s']} | {x['out_msgs_s']} | {x['out_kib_s']} | {x['server_cpu_pct']}% | "
                   f"{x['python_cpu_pct']}% | {x['server_rss_mib']} MiB |")
    out.append(f"\nsteady state: {s['directory_updates_applied_s']} directory updates applied/s by all watchers "
               f"(N×(N-1)/refresh = {s['expected_updates_s']}); refresh → applied at a watcher "
               f"p50/p95/max {d(s['propagation_ms'], 'ms')}; nats-server RSS idle {s['server_rss_idle_mib']} MiB")
    t = r["totals"]
    out.append(f"totals: nats-server RSS peak {t['server_rss_peak_mib']} MiB, Python RSS {t['python_rss_mib']} MiB, "
               f"{t['directory_updates_applied']} directory updates applied, {t['watch_restarts']} watch restarts, "
               f"{t['announcements_rejected']} announcements rejected, {t['requests_served']} requests served, "
               f"{t['busy_refusals']} busy refusals, {t['permission_violations_in_server_log']} permission violations")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--wave", type=int, default=20, help="newcomers joining after the first wave")
    ap.add_argument("--leave", type=int, default=20, help="nodes that leave (delete their entry)")
    ap.add_argument("--crash", type=int, default=10, help="nodes that vanish without deleting their entry")
    ap.add_argument("--ttl", type=float, default=ANNOUNCE_TTL, help="announcement TTL, seconds (real: %(default)s)")
    ap.add_argument("--tokens", type=int, default=16, help="fake tokens per answer")
    ap.add_argument("--token-ms", type=float, default=0.0, help="fake engine delay per token")
    ap.add_argument("--requests", type=int, default=200, help="requests at concurrency 1 (4× that at --concurrency)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--steady", type=float, default=10.0, help="seconds of steady state measured")
    ap.add_argument("--timeout", type=float, default=60.0, help="per join/leave wave")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--verify-every-copy", action="store_true",
                    help="every simulated node checks every announcement's signature (N× the CPU in this process)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not args.verify_every_copy:
        directory_mod.open_announcement = open_announcement_once
    t0 = time.monotonic()
    report = asyncio.run(run(args))
    report["wall_s"] = round(time.monotonic() - t0, 1)
    print(render(report))
    print(f"\n(total {report['wall_s']} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

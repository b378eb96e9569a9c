"""A stand-in node implementing the mesh's HTTP contract (until the real mesh and hub exist in tests):
``GET /api/status`` and ``/api/events`` with ``mesh`` and ``peers``, ``GET /api/mesh``,
``POST /api/mesh/join|leave|limits`` (admin token; a join without an invite rejoins the mesh in ``urls``,
which a leave keeps), and a minimal ``GET /api/models``.

It runs on its own event loop thread; tests steer it (``join_failure``, ``hold_join``, ``push``) and
read what the app sent (``calls``)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web

TOKEN = "fake-admin-token"


def peer(name: str, models: list[str], tps: float = 60.0, state: str = "live", latency: float = 30.0,
         free: int = 2, backend: str = "cuda") -> dict:
    return {"id": f"{name}-0123456789", "name": name, "version": "0.1.0", "backend": backend,
            "models": [{"id": m, "context_length": 8192, "free_slots": free, "queued": 0,
                        "tokens_per_second_p50": tps, "ttft_ms_p50": 120.0} for m in models],
            "free_slots": free, "queued": 0, "tokens_per_second": tps, "latency_ms": latency, "state": state}


PEERS = [
    peer("alice-desktop", ["Qwen3-8B-Q4_K_M", "Qwen3-4B-Q4_K_M"], tps=84.2, latency=18.0, free=3),
    peer("bob-macbook", ["Llama-3.2-3B-Instruct-Q4_K_M"], tps=41.7, latency=64.5, free=1, backend="metal"),
    peer("carol-server", ["Qwen3-14B-Q4_K_M", "Qwen3-8B-Q4_K_M", "Mistral-7B-Instruct-v0.3-Q4_K_M",
                          "gemma-3-4b-it-Q4_K_M", "Phi-4-mini-instruct-Q4_K_M"], tps=122.9, latency=9.3, free=6),
    peer("dave-laptop", ["SmolLM2-1.7B-Instruct-Q4_K_M"], tps=None, latency=None, free=0, state="stale",
         backend="cpu"),
]


class FakeNode:
    def __init__(self) -> None:
        self.token = TOKEN
        self.mesh: dict[str, Any] = {
            "state": "off", "url": None, "urls": [], "mode": None, "error": None,
            "node": {"id": "fake-node-id", "name": "test-box"}, "hub": None,
            "limits": {"max_tokens": 4096, "max_concurrent": 2, "reserved_local_slots": 1},
            "serving_mesh_requests": 0, "served_total": 0, "peer_count": 0}
        self.peers: list[dict] = []
        self.saved_mode: str | None = None  # the mode of the mesh in "urls" (kept after a leave, as the node does)
        self.in_flight = 0  # requests running here (local and from peers)
        self.join_failure: tuple[int, str] | None = None  # (status, message) for the next joins
        self.late_events = False  # a failed join's mesh events reach the app after its answer
        self.qwen_state = "available"  # the one catalog model of GET /api/models
        self.hold_join: asyncio.Event | None = None  # joins wait until this is set (release_join)
        self.calls: list[tuple[str, str, Any]] = []
        self._listeners: set[asyncio.Queue] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-node", daemon=True)

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> "FakeNode":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/mesh", self._get_mesh)
        app.router.add_post("/api/mesh/join", self._join)
        app.router.add_post("/api/mesh/leave", self._leave)
        app.router.add_post("/api/mesh/limits", self._limits)
        app.router.add_get("/api/models", self._models)
        app.router.add_post("/api/models/pull", self._pull)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def close(self) -> None:
        async def stop() -> None:
            for q in list(self._listeners):
                q.put_nowait(None)
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- steering -----------------------------------------------------------------------------------------

    def hold_joins(self) -> None:
        async def make() -> None:
            self.hold_join = asyncio.Event()

        asyncio.run_coroutine_threadsafe(make(), self.loop).result(5)

    def release_join(self) -> None:
        self.loop.call_soon_threadsafe(lambda: self.hold_join.set() if self.hold_join else None)

    def push(self, name: str, data: dict) -> None:
        """Send one event to every /api/events listener (from the test's thread)."""
        def put() -> None:
            for q in list(self._listeners):
                q.put_nowait((name, data))

        self.loop.call_soon_threadsafe(put)

    def set_serving(self, n: int) -> None:
        """n requests from peers running here (they count in requests in flight too)."""
        self.in_flight = n
        self.set_mesh(serving_mesh_requests=n)

    def set_mesh(self, **changes: Any) -> None:
        self.mesh.update(changes)
        self.push("mesh", {"type": "mesh", **self.mesh})

    # -- documents ----------------------------------------------------------------------------------------

    def status_doc(self) -> dict:
        return {
            "node": {"id": "fake-node-id", "version": "0.1.0", "uptime_seconds": 42.0, "ready": True,
                     "host": "127.0.0.1", "port": self.port},
            "capability": {"backend": "cpu", "gpu_offload_supported": False, "devices": [],
                           "ram_total_bytes": 17_179_869_184, "ram_free_bytes": 9_663_676_416, "physical_cores": 8,
                           "logical_cores": 16, "threads": 8, "vram_total_bytes": 0, "vram_free_bytes": 0},
            "models": [{"id": "SmolLM2-135M-Instruct", "state": "ready", "pinned": True, "context_length": 2048,
                        "slots": 4, "slots_busy": min(self.in_flight, 4)}],
            "throughput": {"SmolLM2-135M-Instruct": {"tokens_per_second_p50": 98.4, "ttft_ms_p50": 31.0,
                                                     "samples": 20}},
            "requests": {"in_flight": self.in_flight, "queued": 0},
            "mesh": dict(self.mesh),
            "peers": list(self.peers),
        }

    def mesh_doc(self) -> dict:
        return {**self.mesh, "peers": list(self.peers)}

    # -- handlers -----------------------------------------------------------------------------------------

    def _admin(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": {"message": "admin token required", "type": "authentication_error",
                                                 "param": None, "code": "admin_token_required"}}, status=401)
        return None

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.calls.append((request.method, request.path, body))
        return body

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status_doc())

    async def _get_mesh(self, request: web.Request) -> web.Response:
        return web.json_response(self.mesh_doc())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        q: asyncio.Queue = asyncio.Queue()
        self._listeners.add(q)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            await resp.write(b"event: status\ndata: " + json.dumps(self.status_doc()).encode() + b"\n\n")
            while (item := await q.get()) is not None:
                name, data = item
                await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        finally:
            self._listeners.discard(q)
        return resp

    async def _join(self, request: web.Request) -> web.Response:
        if (denied := self._admin(request)) is not None:
            return denied
        body = await self._body(request) or {}
        target = body.get("invite") or body.get("url")
        saved_mode = None
        if not target and self.mesh["urls"]:  # no invite: rejoin the mesh this node was last in
            target, saved_mode = ",".join(self.mesh["urls"]), self.saved_mode
        if not target:
            return web.json_response({"error": {
                "message": "'invite' is required: an invite token (cmi1.…) from the hub's owner, or a mesh URL "
                           "(nats://host:4222). (Without one, the node rejoins the mesh it was last in; it has "
                           "none.)", "type": "invalid_request_error", "param": "invite",
                "code": "missing_required_parameter"}}, status=400)
        if not self.late_events:
            self.set_mesh(state="connecting", error=None)
        if self.hold_join is not None:
            await self.hold_join.wait()
        if self.join_failure is not None:  # as the node does: "error", then "off" with the message
            status, message = self.join_failure
            if self.late_events:  # the events stream is another connection: they may come after the answer
                def late() -> None:
                    self.set_mesh(state="connecting", error=None)
                    self.set_mesh(state="error", error=message)
                    self.set_mesh(state="off", error=message)

                self.loop.call_later(0.3, late)
            else:
                self.set_mesh(state="error", error=message)
                self.set_mesh(state="off", error=message)
            return web.json_response({"error": {"message": message, "type": "server_error", "param": None,
                                                "code": "mesh_unavailable"}}, status=status)
        self.peers = list(PEERS)
        url = target.split(",")[0] if "://" in target else "nats://hub.example:4222"
        self.saved_mode = saved_mode or ("open" if "://" in target else "hub")
        if body.get("name"):
            self.mesh["node"] = {**self.mesh["node"], "name": body["name"]}
        self.set_mesh(state="joined", url=url, urls=[url], mode=self.saved_mode, peer_count=len(self.peers))
        self.push("peers", {"type": "peers", "peers": self.peers})
        return web.json_response(self.mesh_doc())

    async def _leave(self, request: web.Request) -> web.Response:
        if (denied := self._admin(request)) is not None:
            return denied
        await self._body(request)
        self.peers = []
        self.set_mesh(state="off", url=None, mode=None, error=None, peer_count=0)
        self.push("peers", {"type": "peers", "peers": []})
        return web.json_response(self.mesh_doc())

    async def _limits(self, request: web.Request) -> web.Response:
        if (denied := self._admin(request)) is not None:
            return denied
        body = await self._body(request) or {}
        self.mesh["limits"] = {**self.mesh["limits"], **{k: v for k, v in body.items() if k in self.mesh["limits"]}}
        self.push("mesh", {"type": "mesh", **self.mesh})
        return web.json_response(self.mesh_doc())

    async def _models(self, request: web.Request) -> web.Response:
        if (denied := self._admin(request)) is not None:
            return denied
        qwen = {"id": "Qwen3-4B-Q4_K_M", "family": "Qwen3-4B", "repo": "Qwen/Qwen3-4B-GGUF",
                "file": "Qwen3-4B-Q4_K_M.gguf", "quant": "Q4_K_M", "size_bytes": 2_497_280_256,
                "size_is_estimate": False, "parameters": 4_022_468_096, "context_length": 40960,
                "license": "apache-2.0", "default_quant": True, "recommended": True, "state": self.qwen_state,
                "local": None, "fit": {"kind": "cpu", "gpu_layers": 0, "total_layers": 36,
                                       "needed_bytes": 3_400_000_000, "available_bytes": 12_000_000_000,
                                       "label": "Runs on the CPU"}}
        return web.json_response({"catalog": [qwen], "local": [{"id": "SmolLM2-135M-Instruct", "state": "ready",
                                                                "pinned": True, "size_bytes": 96_576_768}],
                                  "recommended": qwen["id"]})

    async def _pull(self, request: web.Request) -> web.Response:
        if (denied := self._admin(request)) is not None:
            return denied
        body = await self._body(request)
        self.qwen_state = "downloading"
        self.push("model_state", {"type": "model_state", "model": body["model"], "state": "downloading",
                                  "error": None})
        self.push("download_progress", {"type": "download_progress", "model": body["model"], "state": "downloading",
                                        "total_bytes": 2_497_280_256, "done_bytes": 624_320_064,
                                        "rate_bps": 48_500_000.0, "eta_seconds": 38.6, "error": None})
        return web.json_response({"id": body["model"], "state": "downloading"}, status=202)

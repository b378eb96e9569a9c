"""The Node: composes hardware detection and the model manager, and builds the status document.

The HTTP server (runtime/api) is a thin layer over this object; the desktop app uses the same object
(or the HTTP API) and never reaches into the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from . import __version__
from .catalog import build_catalog, open_status_document, public_maps
from .config import Paths, ServeSettings, admin_token, node_id
from .engine.events import EngineConfig
from .engine.probe import BuildRegistry
from .generation import GenerationService
from .hardware import Capability, RuntimeCapability, default_threads, detect
from .mesh.hub import Hub, HubError, add_member
from .mesh.membership import MeshError
from .mesh.mesh import Mesh, NodeServices
from .models.embedded import DEFAULT_MODEL_ID
from .models.manager import ERROR, READY, RESTARTING, ManagedModel, ModelError, ModelManager
from .models.store import ModelSpecError, resolve
from .stats import ModelStatsBook

log = logging.getLogger(__name__)


class HttpExtension(Protocol):
    """What the HTTP layer asks of an add-on a node carries (a hosted entry's gate, runtime/entry/gate.py):
    to install its middleware and hooks on the application."""

    def install(self, app: Any) -> None: ...


@dataclass
class Node:
    settings: ServeSettings
    paths: Paths
    started_at: float = field(default_factory=time.time)
    cap: Capability | None = None
    runtime_cap: RuntimeCapability | None = None
    id: str = ""
    manager: ModelManager = field(init=False)
    admin_token: str = field(init=False, repr=False)
    _load_task: asyncio.Task | None = None
    _listeners: set = field(default_factory=set)
    _started: bool = False
    hub: Hub | None = None  # when this node hosts a private mesh (serve --hub)
    entry: HttpExtension | None = None  # a hosted entry's gate (runtime/entry/gate.py EntryService)
    # answers as this node's HTTP clients saw them, per model (the catalog's "measured" figures)
    measured: ModelStatsBook = field(default_factory=ModelStatsBook)

    def __post_init__(self) -> None:
        self.paths.ensure()
        self.id = node_id(self.paths)
        self.admin_token = admin_token(self.paths)
        budget = self.settings.memory_budget_bytes
        if budget is None:
            budget = int(psutil.virtual_memory().total * 0.8)
        self.manager = ModelManager(
            self.paths.models,
            self._engine_config,
            ttl_seconds=self.settings.model_ttl,
            memory_budget_bytes=budget,
            partial_dir=self.paths.cache / "partial",
            builds=BuildRegistry(self.paths.data / "llama-builds.json"),
        )
        self.manager.subscribe(self._broadcast)
        self.generation = GenerationService(self.manager, lambda: self.cap, self.available_models)
        # The mesh is part of every node; joining it is a setting.
        self.mesh = Mesh(
            self.paths.config,
            self.id,
            NodeServices(
                models=self.manager,
                generation=self.generation,
                publish=self._broadcast,
                capability=lambda: self.runtime_cap.cap if self.runtime_cap else None,
                hub=lambda: self.hub,
            ),
        )
        self.pinned: list[str] = []
        for s in self.settings.models or ([] if self.settings.entry else [DEFAULT_MODEL_ID]):
            mid, path, embedded = self._resolve_served(s)
            self.manager.add_pinned(mid, path, embedded_default=embedded)
            self.pinned.append(mid)

    def _resolve_served(self, ref: str) -> tuple[str, Path | None, bool]:
        """A `--model` argument → (id, path or None, is the embedded default). Accepts a GGUF path, the
        id of a model on this machine (pulled or found in the models folder) and a catalog name of a
        downloaded model; anything else is a clear error (raises ModelSpecError)."""
        known = self.manager.get(ref)
        if known is not None and known.path is not None and known.path.exists():
            return known.id, known.path, known.embedded_default
        try:
            spec = resolve(ref, self.paths.models)
            return spec.id, spec.path, spec.embedded_default or spec.path is None
        except ModelSpecError as unknown:
            try:
                mref = self.manager.resolve(ref)
            except ModelError:
                raise unknown from None
            m = self.manager.get(mref.id)
            if m is not None and m.path is not None and m.path.exists():
                return m.id, m.path, m.embedded_default
            raise ModelSpecError(
                f"the model '{mref.id}' is not on this machine yet; download it first: closedmesh models pull {ref}"
            ) from None

    def _engine_config(self) -> tuple[Capability, EngineConfig]:
        assert self.cap is not None and self.runtime_cap is not None, "capability is detected before any load"
        s = self.settings
        return self.cap, EngineConfig(
            threads=self.runtime_cap.threads,
            slots=s.slots,
            ctx_per_slot=s.ctx_per_slot,
            gpu_layers=s.gpu_layers,
            max_queue=s.max_queue,
            kv_type=s.kv_type,
            stall_timeout=s.engine_stall_timeout,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    def start_loading(self) -> None:
        self._load_task = asyncio.get_running_loop().create_task(self._start())

    async def wait_ready(self) -> None:
        if self._load_task:
            await asyncio.shield(self._load_task)

    async def _start(self) -> None:
        self.cap = await asyncio.to_thread(detect)
        threads = self.settings.threads or default_threads(self.cap)
        self.runtime_cap = RuntimeCapability(self.cap, threads)
        log.info(
            "hardware: backend=%s devices=%s RAM %.1f GiB free of %.1f GiB, %d physical cores → %d threads",
            self.cap.backend,
            [d.name for d in self.cap.devices] or "none",
            self.cap.ram_free_bytes / 2**30,
            self.cap.ram_total_bytes / 2**30,
            self.cap.physical_cores,
            threads,
        )
        self.manager.start()
        await self._start_hub()
        await self.mesh.start()
        try:
            await self._load_pinned()
        finally:
            self._started = True
            self._broadcast({"type": "node_ready", "ready": self.ready})

    async def _start_hub(self) -> None:
        """serve --hub: run the private hub and make this node its first member."""
        if not self.settings.hub:
            return
        hub = Hub(self.paths.data / "hub", self.id, host=self.settings.hub_host, port=self.settings.hub_port)
        try:
            await hub.start()
        except HubError as e:
            log.error("the private hub did not start: %s", e)
            self.mesh.set_error(f"the private hub did not start: {e}")
            await hub.stop()
            return
        self.hub = hub
        await asyncio.to_thread(add_member, hub.hub_dir, self.mesh.ident.public, self.mesh.config.name)
        if not (self.mesh.config.joined and hub.local_url in self.mesh.config.urls):
            c = self.mesh.config
            c.joined, c.mode, c.urls = True, "hub", [hub.local_url]
        self.mesh.config.tls = hub.state.get("tls")
        self.mesh.config.save(self.mesh.config_path)
        try:
            await self.mesh.connect_saved()
        except MeshError as e:
            log.error("could not join this node's own hub: %s", e)

    async def _load_pinned(self) -> None:
        assert self.runtime_cap is not None
        for mid in self.pinned:
            try:
                await self.manager.ensure_loaded(mid)  # _broadcast records its GPU layers when ready
            except ModelError as e:  # the node keeps running and reports the failure
                log.error("could not load model %s: %s", mid, e)

    def _broadcast(self, event: dict) -> None:
        if event.get("type") == "model_state" and event.get("state") == READY and self.runtime_cap:
            m = self.manager.get(event["model"])
            if m and m.engine:
                self.runtime_cap.gpu_layers[m.id] = m.engine.offload.gpu_layers
        if event.get("type") in ("model_state", "node_ready"):
            self.mesh.poke()
        for q in list(self._listeners):
            q.put_nowait(event)

    async def close(self) -> None:
        if self._load_task and not self._load_task.done():
            self._load_task.cancel()
            try:
                await self._load_task
            except BaseException:
                pass
        for q in list(self._listeners):
            q.put_nowait(None)  # event streams end now instead of holding the shutdown
        await self.mesh.close()
        if self.hub is not None:
            await self.hub.stop()
        await self.manager.close()

    # -- queries -----------------------------------------------------------------------------------

    def find(self, model_id: str) -> ManagedModel | None:
        return self.manager.get(model_id)

    def available_models(self) -> list[str]:
        """Model ids a request may name here: local ones, then those only mesh peers serve."""
        local = [m.id for m in self.manager.routable()]
        if not self.mesh.connected:
            return local
        seen = {m.lower() for m in local}
        return local + [mid for mid in self.mesh.directory.mesh_models() if mid.lower() not in seen]

    @property
    def ready(self) -> bool:
        """Ready once the models it was started with were loaded and none of them failed. (One that
        was later unloaded to make room loads again on the next request: still ready.)"""
        return self._started and all((m := self.manager.get(p)) is not None and m.state != ERROR for p in self.pinned)

    def health(self) -> tuple[int, dict]:
        """What /health answers: 200 "ok"; 200 "degraded" with the reasons while at least one model serves
        and another is down (crashed, restarting or failed to load); 503 while starting or when no model can
        serve. The models considered are the ones this node was started with plus any it loaded since."""
        considered = [
            m for m in self.manager.models.values() if m.id in self.pinned or m.engine is not None or m.has_served
        ]
        models = {m.id: m.state for m in considered}
        down = {m.id: m.error or m.state for m in considered if m.state in (ERROR, RESTARTING)}
        if not self._started:
            body: dict = {"status": "loading", "models": models}
            if down:
                body["errors"] = down
            return 503, body
        if not down:
            return 200, {"status": "ok", "models": models}
        serving = [m for m in considered if m.state not in (ERROR, RESTARTING)]
        body = {
            "status": "degraded" if serving else "error",
            "models": models,
            "errors": down,
            "reason": "; ".join(f"{mid}: {why}" for mid, why in down.items()),
        }
        return (200 if serving else 503), body

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self._listeners.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._listeners.discard(q)

    def status(self) -> dict:
        models = []
        catalog = {}
        in_flight = queued = 0
        for m in self.manager.models.values():
            st = m.public()
            if m.engine is not None:
                est = m.engine.status()
                in_flight += est["in_flight"]
                queued += est["queued"]
                catalog[m.id] = m.engine.stats.summary()
                st.update(est)
                st["state"] = m.state
            else:
                st.update({"context_length": None, "slots": None})
            models.append(st)
        status = {
            "node": {
                "id": self.id,
                "version": __version__,
                "uptime_seconds": round(time.time() - self.started_at, 3),
                "ready": self.ready,
                "host": self.settings.host,
                "port": self.settings.port,
            },
            "capability": self.runtime_cap.to_json() if self.runtime_cap else None,
            "models": models,
            "throughput": catalog,
            "requests": {"in_flight": in_flight, "queued": queued},
            "mesh": self.mesh.status(with_peers=False),
            "peers": self.mesh.directory.public(),
        }
        cat = self.catalog(native=catalog)
        status.update(public_maps(cat))
        status["catalog"] = cat
        return status

    def catalog(self, native: dict[str, dict] | None = None) -> dict:
        """The throughput catalog (runtime/catalog.py): this node's native and measured windows and what
        the live peers announced. ``native``: the engines' summaries when the caller has them already."""
        if native is None:
            native = {m.id: m.engine.stats.summary() for m in self.manager.models.values() if m.engine is not None}
        local = {m.id: (m.engine.n_ctx_seq if m.engine else None) for m in self.manager.routable()}
        mesh: dict[str, list[dict]] = {}
        if self.mesh.connected:
            for mid, peers in self.mesh.directory.mesh_models().items():
                mesh[mid] = [p.model(mid) or {} for p in peers]
        return build_catalog(local, native, self.measured.summaries(), mesh)

    def open_status(self) -> dict:
        """/api/status of an entry node: the catalog and per-model counts, nothing that names a machine."""
        return open_status_document(self.catalog(), ready=self.ready, mesh_connected=self.mesh.connected)

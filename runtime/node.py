"""The Node: composes hardware detection, the served models' engines and their state.

The HTTP server (runtime/api) is a thin layer over this object; the desktop app uses the same object
(or the HTTP API) and never reaches into the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from . import __version__
from .config import Paths, ServeSettings, node_id
from .engine.engine import EngineConfig, ModelEngine
from .hardware import Capability, RuntimeCapability, default_threads, detect
from .models.embedded import DEFAULT_MODEL_ID, ensure_default_model
from .models.store import ModelSpec, resolve

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    spec: ModelSpec
    state: str = "pending"  # pending | fetching | loading | ready | error
    error: str | None = None
    engine: ModelEngine | None = None
    loaded_at: float | None = None

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass
class Node:
    settings: ServeSettings
    paths: Paths
    started_at: float = field(default_factory=time.time)
    models: dict[str, ServedModel] = field(default_factory=dict)
    cap: Capability | None = None
    runtime_cap: RuntimeCapability | None = None
    id: str = ""
    _load_task: asyncio.Task | None = None
    _listeners: set = field(default_factory=set)

    def __post_init__(self) -> None:
        self.paths.ensure()
        self.id = node_id(self.paths)
        specs = self.settings.models or [DEFAULT_MODEL_ID]
        for s in specs:
            spec = resolve(s, self.paths.models)  # raises ModelSpecError with a clear message
            self.models.setdefault(spec.id.lower(), ServedModel(spec))

    # -- lifecycle ---------------------------------------------------------------------------------

    def start_loading(self) -> None:
        self._load_task = asyncio.get_running_loop().create_task(self._load_all())

    async def wait_ready(self) -> None:
        if self._load_task:
            await asyncio.shield(self._load_task)

    async def _load_all(self) -> None:
        self.cap = await asyncio.to_thread(detect)
        threads = self.settings.threads or default_threads(self.cap)
        self.runtime_cap = RuntimeCapability(self.cap, threads)
        log.info("hardware: backend=%s devices=%s RAM %.1f GiB free of %.1f GiB, %d physical cores → %d threads",
                 self.cap.backend, [d.name for d in self.cap.devices] or "none",
                 self.cap.ram_free_bytes / 2**30, self.cap.ram_total_bytes / 2**30, self.cap.physical_cores, threads)
        cfg = EngineConfig(threads=threads, slots=self.settings.slots, ctx_per_slot=self.settings.ctx_per_slot,
                           gpu_layers=self.settings.gpu_layers, max_queue=self.settings.max_queue)
        for m in self.models.values():
            await self._load_one(m, cfg)

    async def _load_one(self, m: ServedModel, cfg: EngineConfig) -> None:
        try:
            path = m.spec.path
            if path is None:
                self._set_state(m, "fetching")
                path = await asyncio.to_thread(ensure_default_model, self.paths.models)
            self._set_state(m, "loading")
            m.engine = await asyncio.to_thread(ModelEngine, m.id, path, self.cap, cfg)
            m.loaded_at = time.time()
            assert self.runtime_cap is not None
            self.runtime_cap.gpu_layers[m.id] = m.engine.offload.gpu_layers
            self._set_state(m, "ready")
        except Exception as e:  # the node keeps running and reports the failure
            log.error("could not load model %s: %s", m.id, e)
            m.error = str(e)
            self._set_state(m, "error")

    def _set_state(self, m: ServedModel, state: str) -> None:
        m.state = state
        for q in list(self._listeners):
            q.put_nowait({"type": "model_state", "model": m.id, "state": state, "error": m.error})

    async def close(self) -> None:
        if self._load_task and not self._load_task.done():
            self._load_task.cancel()
            try:
                await self._load_task
            except BaseException:
                pass
        for m in self.models.values():
            if m.engine:
                await asyncio.to_thread(m.engine.close)
                m.engine = None

    # -- queries -----------------------------------------------------------------------------------

    def find(self, model_id: str) -> ServedModel | None:
        return self.models.get(model_id.lower())

    @property
    def ready(self) -> bool:
        return bool(self.models) and all(m.state == "ready" for m in self.models.values())

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
        for m in self.models.values():
            if m.engine is not None:
                st = m.engine.status()
                in_flight += st["in_flight"]
                queued += st["queued"]
                catalog[m.id] = m.engine.stats.summary()
            else:
                st = {"id": m.id, "file": str(m.spec.path) if m.spec.path else None, "state": m.state,
                      "context_length": None, "slots": None}
            st["state"] = m.state
            if m.error:
                st["error"] = m.error
            models.append(st)
        return {
            "node": {"id": self.id, "version": __version__, "uptime_seconds": round(time.time() - self.started_at, 3),
                     "ready": self.ready, "host": self.settings.host, "port": self.settings.port},
            "capability": self.runtime_cap.to_json() if self.runtime_cap else None,
            "models": models,
            "throughput": catalog,
            "requests": {"in_flight": in_flight, "queued": queued},
            "peers": [],
        }

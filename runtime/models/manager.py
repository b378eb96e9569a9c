"""The models a node knows: on disk, downloading, loading, ready — and their lifecycle.

One ``ModelManager`` per node. It loads a model on first use (once, however many requests arrive
together), unloads idle models after a TTL, evicts the least recently used idle model when a memory
budget would be exceeded, and runs pulls through the Downloader. Every state change is published to
listeners (the node turns them into /api/events).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..engine.engine import EngineConfig, ModelEngine
from ..hardware import Capability
from .embedded import DEFAULT_MODEL_ID, FILENAME as DEFAULT_FILENAME, ensure_default_model
from .store import model_id_for_file

log = logging.getLogger(__name__)

REGISTRY = "registry.json"

# States a model moves through (plain strings: they travel as JSON).
AVAILABLE = "available"  # in the catalog, not on this machine
DOWNLOADING = "downloading"
ON_DISK = "on_disk"
LOADING = "loading"
READY = "ready"
UNLOADING = "unloading"
ERROR = "error"


class ModelError(Exception):
    """A model operation that cannot be done; ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400, code: str = "model_error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class ManagedModel:
    id: str
    path: Path | None = None
    source: str | None = None  # what it was pulled from (catalog id, repo/file or URL)
    sha256: str | None = None
    state: str = ON_DISK
    error: str | None = None
    engine: ModelEngine | None = None
    pinned: bool = False  # served from the start (--model / default): never unloaded for idleness
    embedded_default: bool = False
    last_used: float = field(default_factory=time.monotonic)
    loaded_at: float | None = None
    download: dict | None = None  # last progress snapshot while downloading
    _load: asyncio.Future | None = None

    def public(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "state": self.state, "file": str(self.path) if self.path else None,
                             "source": self.source, "pinned": self.pinned}
        if self.path and self.path.exists():
            d["size_bytes"] = self.path.stat().st_size
        if self.error:
            d["error"] = self.error
        if self.download:
            d["download"] = self.download
        return d


class ModelManager:
    def __init__(self, models_dir: Path, cfg_provider: Callable[[], tuple[Capability, EngineConfig]],
                 ttl_seconds: float = 900.0, memory_budget_bytes: int | None = None) -> None:
        self.models_dir = models_dir
        self._cfg_provider = cfg_provider
        self.ttl_seconds = ttl_seconds
        self.memory_budget_bytes = memory_budget_bytes
        self.models: dict[str, ManagedModel] = {}
        self._listeners: list[Callable[[dict], None]] = []
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task | None = None
        self._registry = self._read_registry()
        self.scan()

    # -- registry of files on disk -----------------------------------------------------------------

    def _read_registry(self) -> dict[str, dict]:
        try:
            return json.loads((self.models_dir / REGISTRY).read_text())
        except (OSError, ValueError):
            return {}

    def _write_registry(self) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.models_dir / (REGISTRY + ".tmp")
        tmp.write_text(json.dumps(self._registry, indent=2, sort_keys=True))
        os.replace(tmp, self.models_dir / REGISTRY)

    def register_file(self, model_id: str, path: Path, source: str | None, sha256: str | None) -> ManagedModel:
        self._registry[model_id] = {"file": path.name, "source": source, "sha256": sha256}
        self._write_registry()
        m = self.models.get(model_id.lower())
        if m is None:
            m = ManagedModel(model_id, path, source, sha256)
            self.models[model_id.lower()] = m
        m.path, m.source, m.sha256, m.error = path, source, sha256, None
        self._set(m, ON_DISK)
        return m

    def scan(self) -> None:
        """Pick up every GGUF in the models folder (ids from the registry, else the file stem)."""
        if not self.models_dir.is_dir():
            return
        by_file = {v["file"]: (k, v) for k, v in self._registry.items()}
        for f in sorted(self.models_dir.glob("*.gguf")):
            if f.name in by_file:
                mid, meta = by_file[f.name]
                source, sha = meta.get("source"), meta.get("sha256")
            elif f.name == DEFAULT_FILENAME:
                mid, source, sha = DEFAULT_MODEL_ID, "embedded", None
            else:
                mid, source, sha = model_id_for_file(f), None, None
            if mid.lower() not in self.models:
                self.models[mid.lower()] = ManagedModel(mid, f, source, sha, embedded_default=f.name == DEFAULT_FILENAME)

    # -- events --------------------------------------------------------------------------------------

    def subscribe(self, fn: Callable[[dict], None]) -> None:
        self._listeners.append(fn)

    def _publish(self, event: dict) -> None:
        for fn in list(self._listeners):
            try:
                fn(event)
            except Exception:  # a broken listener must not break model management
                log.exception("model event listener failed")

    def _set(self, m: ManagedModel, state: str, error: str | None = None) -> None:
        m.state = state
        m.error = error
        self._publish({"type": "model_state", "model": m.id, "state": state, "error": error})

    # -- queries ---------------------------------------------------------------------------------------

    def get(self, model_id: str) -> ManagedModel | None:
        return self.models.get(model_id.lower())

    def routable(self) -> list[ManagedModel]:
        """Models a request may name: on disk (loadable on demand) or loaded."""
        return [m for m in self.models.values() if m.state in (ON_DISK, LOADING, READY, UNLOADING)
                or (m.state == ERROR and m.path is not None and m.engine is None and m.pinned)]

    def engines(self) -> list[ModelEngine]:
        return [m.engine for m in self.models.values() if m.engine is not None]

    # -- adding models -----------------------------------------------------------------------------------

    def add_pinned(self, model_id: str, path: Path | None, embedded_default: bool = False) -> ManagedModel:
        m = self.get(model_id)
        if m is None:
            m = ManagedModel(model_id, path, "embedded" if embedded_default else str(path) if path else None)
            self.models[model_id.lower()] = m
        if path is not None:
            m.path = path
        m.pinned = True
        m.embedded_default = m.embedded_default or embedded_default
        if m.path is None:
            m.state = AVAILABLE
        return m

    # -- loading -----------------------------------------------------------------------------------------

    async def ensure_loaded(self, model_id: str) -> ModelEngine:
        """The engine for a model, loading it first when needed. Concurrent callers share one load."""
        m = self.get(model_id)
        if m is None:
            raise ModelError(f"unknown model '{model_id}'", 404, "model_not_found")
        m.last_used = time.monotonic()
        if m.engine is not None and m.state == READY:
            return m.engine
        if m._load is None or m._load.done():
            if m.state in (AVAILABLE, DOWNLOADING) and not m.embedded_default:
                raise ModelError(f"the model '{m.id}' is not on this machine yet"
                                 + (" (downloading)" if m.state == DOWNLOADING else
                                    f"; pull it first: closedmesh models pull {m.id}"), 404, "model_not_downloaded")
            m._load = asyncio.get_running_loop().create_task(self._load(m))
        return await asyncio.shield(m._load)

    async def _load(self, m: ManagedModel) -> ModelEngine:
        async with self._lock:  # one load at a time: memory accounting stays exact
            if m.engine is not None:
                return m.engine
            try:
                if m.path is None or (m.embedded_default and not m.path.exists()):
                    self._set(m, DOWNLOADING)
                    m.path = await asyncio.to_thread(ensure_default_model, self.models_dir)
                cap, cfg = self._cfg_provider()
                await self._make_room(m, cap)
                self._set(m, LOADING)
                engine = await asyncio.to_thread(ModelEngine, m.id, m.path, cap, cfg)
            except ModelError as e:
                self._set(m, ERROR if m.pinned else ON_DISK, str(e))
                raise
            except Exception as e:
                log.error("could not load model %s: %s", m.id, e)
                self._set(m, ERROR, str(e))
                raise ModelError(f"the model '{m.id}' could not be loaded: {e}", 503, "model_load_failed") from None
            m.engine = engine
            m.loaded_at = time.time()
            m.last_used = time.monotonic()
            self._set(m, READY)
            return engine

    def _footprint(self, m: ManagedModel) -> int:
        if m.engine is not None:
            return m.engine.info.size_bytes + m.engine.slot_plan.kv_bytes
        return m.path.stat().st_size if m.path and m.path.exists() else 0

    async def _make_room(self, m: ManagedModel, cap: Capability) -> None:
        """Evict least recently used idle models until the new one fits the memory budget."""
        budget = self.memory_budget_bytes
        if budget is None:
            return
        need = self._footprint(m) * 2  # weights + a KV/compute allowance until the real plan is known
        loaded = sorted((x for x in self.models.values() if x.engine is not None and x is not m),
                        key=lambda x: x.last_used)
        used = sum(self._footprint(x) for x in loaded)
        for victim in loaded:
            if used + need <= budget:
                break
            if self._busy(victim):
                continue
            log.info("unloading %s to make room for %s (memory budget %.1f GiB)", victim.id, m.id, budget / 2**30)
            used -= self._footprint(victim)
            await self._unload(victim)
        if used + need > budget:
            raise ModelError(f"not enough memory to load '{m.id}' next to the models in use "
                             f"(budget {budget / 2**30:.1f} GiB); unload a model or raise --memory-budget",
                             503, "insufficient_memory")

    @staticmethod
    def _busy(m: ManagedModel) -> bool:
        if m.engine is None:
            return False
        c = m.engine.scheduler.counts()
        return c["in_flight"] > 0 or c["queued"] > 0

    async def load(self, model_id: str) -> ModelEngine:
        return await self.ensure_loaded(model_id)

    async def unload(self, model_id: str, force: bool = False) -> None:
        m = self.get(model_id)
        if m is None:
            raise ModelError(f"unknown model '{model_id}'", 404, "model_not_found")
        if m.engine is None:
            return
        if self._busy(m) and not force:
            raise ModelError(f"the model '{m.id}' is answering requests; retry when they are done", 409,
                             "model_busy")
        async with self._lock:
            await self._unload(m)

    async def _unload(self, m: ManagedModel) -> None:
        engine, m.engine = m.engine, None
        if engine is None:
            return
        self._set(m, UNLOADING)
        await asyncio.to_thread(engine.close)
        self._set(m, ON_DISK if m.path and m.path.exists() else AVAILABLE)

    async def delete(self, model_id: str) -> None:
        m = self.get(model_id)
        if m is None or m.path is None:
            raise ModelError(f"unknown model '{model_id}'", 404, "model_not_found")
        if m.engine is not None:
            await self.unload(model_id)
        path = m.path
        await asyncio.to_thread(lambda: path.unlink(missing_ok=True))
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        self._registry.pop(m.id, None)
        self._write_registry()
        del self.models[m.id.lower()]
        self._publish({"type": "model_state", "model": m.id, "state": "deleted", "error": None})

    # -- idle unloading ------------------------------------------------------------------------------

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())

    async def _reap_idle(self) -> None:
        interval = max(0.2, min(10.0, self.ttl_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for m in list(self.models.values()):
                if (m.engine is not None and not m.pinned and not self._busy(m)
                        and now - m.last_used >= self.ttl_seconds and not self._lock.locked()):
                    log.info("unloading %s: idle for %.0f s", m.id, now - m.last_used)
                    async with self._lock:
                        if m.engine is not None and not self._busy(m):
                            await self._unload(m)

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        for m in self.models.values():
            if m._load and not m._load.done():
                m._load.cancel()
        for m in self.models.values():
            if m.engine is not None:
                engine, m.engine = m.engine, None
                await asyncio.to_thread(engine.close)

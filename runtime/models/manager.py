"""The models a node knows: on disk, downloading, loading, ready — and their lifecycle.

One ``ModelManager`` per node. It loads a model on first use (once, however many requests arrive
together), unloads idle models after a TTL, evicts the least recently used idle model when a memory
budget would be exceeded, and runs pulls through the Downloader. Every state change is published to
listeners (the node turns them into /api/events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..engine.cores import CoreShare
from ..engine.engine import ModelEngine
from ..engine.events import EngineConfig
from ..engine.probe import BuildRegistry
from ..errors import NodeError
from ..hardware import Capability
from . import hf
from .catalog import CatalogEntry, ModelRef, UnknownModelError, load_catalog, resolve_reference
from .download import DownloadCancelled, Downloader, DownloadError, DownloadJob, DownloadProgress
from .embedded import DEFAULT_MODEL_ID, ensure_default_model
from .embedded import FILENAME as DEFAULT_FILENAME
from .fit import assess_fit, recommend
from .integrity import is_verified, mark_verified, marker_path, sha256_file, verified_sha256
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
RESTARTING = "restarting"  # its engine process crashed and is being restarted
ERROR = "error"


def _check_integrity(path: Path, sha256: str | None, models_dir: Path) -> None:
    """Before loading: a file that changed since it was verified is hashed again; a mismatch moves it
    to quarantine and fails with a clear error. A corrupt file is never loaded."""
    if not sha256 or is_verified(path, sha256):
        return
    actual = sha256_file(path)
    if actual == sha256:
        mark_verified(path, sha256)
        return
    q = models_dir / "quarantine"
    q.mkdir(parents=True, exist_ok=True)
    dest = q / path.name
    os.replace(path, dest)
    marker_path(path).unlink(missing_ok=True)
    raise ModelError(
        f"the file of this model is corrupt (sha256 {actual}, expected {sha256}); it was moved to "
        f"{dest} and not loaded. Pull the model again.",
        503,
        "model_corrupt",
    )


class ModelError(NodeError):
    """A model operation that cannot be done; ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400, code: str = "model_error") -> None:
        super().__init__(message, status=status, code=code, param="model")


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
    has_served: bool = False  # was loaded in this run: its health counts in /health from then on
    _load: asyncio.Future | None = None

    def public(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "file": str(self.path) if self.path else None,
            "source": self.source,
            "pinned": self.pinned,
        }
        if self.path and self.path.exists():
            d["size_bytes"] = self.path.stat().st_size
        if self.error:
            d["error"] = self.error
        if self.download:
            d["download"] = self.download
        return d


class ModelManager:
    def __init__(
        self,
        models_dir: Path,
        cfg_provider: Callable[[], tuple[Capability, EngineConfig]],
        ttl_seconds: float = 900.0,
        memory_budget_bytes: int | None = None,
        partial_dir: Path | None = None,
        builds: BuildRegistry | None = None,
    ) -> None:
        self.models_dir = models_dir
        self.partial_dir = partial_dir or models_dir / ".partial"
        self.catalog: list[CatalogEntry] = load_catalog()
        self._downloader: Downloader | None = None
        self._pulls: dict[str, asyncio.Task] = {}
        self._cfg_provider = cfg_provider
        self.builds = builds
        # The node's decode threads, shared by its engines while several generate at once (engine/cores.py).
        self.cores = CoreShare()
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
        # Files in the models folder are kept by name; files reused from elsewhere (the Hugging Face
        # cache) by absolute path.
        inside = path.parent.resolve() == self.models_dir.resolve()
        self._registry[model_id] = {"file": path.name if inside else str(path), "source": source, "sha256": sha256}
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
        for mid, meta in self._registry.items():
            f = Path(meta["file"])
            if f.is_absolute() and f.is_file() and mid.lower() not in self.models:
                self.models[mid.lower()] = ManagedModel(mid, f, meta.get("source"), meta.get("sha256"))
        for f in sorted(self.models_dir.glob("*.gguf")):
            if f.name in by_file:
                mid, meta = by_file[f.name]
                source, sha = meta.get("source"), meta.get("sha256")
            elif f.name == DEFAULT_FILENAME:
                mid, source, sha = DEFAULT_MODEL_ID, "embedded", None
            else:
                mid, source, sha = model_id_for_file(f), None, None
            if mid.lower() not in self.models:
                self.models[mid.lower()] = ManagedModel(
                    mid, f, source, sha, embedded_default=f.name == DEFAULT_FILENAME
                )

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
        return [m for m in self.models.values() if m.state in (ON_DISK, LOADING, READY, UNLOADING)]

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
        if m.engine is not None and m.state == RESTARTING:
            raise ModelError(
                f"the model '{m.id}' is restarting after its engine crashed ({m.error}); retry in a few seconds",
                503,
                "model_restarting",
            )
        if m._load is None or m._load.done():
            if m.state in (AVAILABLE, DOWNLOADING) and not m.embedded_default:
                raise ModelError(
                    f"the model '{m.id}' is not on this machine yet"
                    + (
                        " (downloading)"
                        if m.state == DOWNLOADING
                        else f"; pull it first: closedmesh models pull {m.id}"
                    ),
                    404,
                    "model_not_downloaded",
                )
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
                if not m.embedded_default:  # the embedded default is verified by ensure_default_model
                    await asyncio.to_thread(_check_integrity, m.path, m.sha256, self.models_dir)
                cap, cfg = self._cfg_provider()
                await self._make_room(m, cap)
                self._set(m, LOADING)
                on_state = self._engine_state_callback(m, asyncio.get_running_loop())
                building = asyncio.ensure_future(
                    asyncio.to_thread(ModelEngine, m.id, m.path, cap, cfg, on_state, self.builds, share=self.cores)
                )
                try:
                    engine = await asyncio.shield(building)
                except asyncio.CancelledError:
                    # Shutting down mid-load: the thread finishes building; close what it built so no
                    # engine thread or model memory is left behind.
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread((await building).close)
                    raise
            except ModelError as e:
                gone = m.path is None or not m.path.exists()
                self._set(m, ERROR if m.pinned or gone else ON_DISK, str(e))
                raise
            except Exception as e:
                log.error("could not load model %s: %s", m.id, e)
                self._set(m, ERROR, str(e))
                raise ModelError(f"the model '{m.id}' could not be loaded: {e}", 503, "model_load_failed") from None
            m.engine = engine
            m.has_served = True
            m.loaded_at = time.time()
            m.last_used = time.monotonic()
            self._set(m, READY)
            return engine

    def _engine_state_callback(self, m: ManagedModel, loop: asyncio.AbstractEventLoop):
        """What the engine's supervisor (a thread) reports, applied on the event loop."""

        def apply(state: str, reason: str | None, engine_at_crash: ModelEngine | None) -> None:
            if m.engine is None or m.engine is not engine_at_crash:
                return  # unloaded (or replaced) meanwhile
            if state == "restarting":
                self._set(m, RESTARTING, reason)
            elif state == "ready":
                self._set(m, READY)
            elif state == "failed":
                m.engine = None  # its worker is gone; a later request or load starts a new one
                self._set(m, ERROR, reason)

        def on_state(state: str, reason: str | None) -> None:
            engine = m.engine
            try:
                loop.call_soon_threadsafe(apply, state, reason, engine)
            except RuntimeError:
                pass  # the loop is closed: the node is gone

        return on_state

    def _footprint(self, m: ManagedModel) -> int:
        if m.engine is not None:
            return m.engine.info.size_bytes + m.engine.kv_cache_bytes
        return m.path.stat().st_size if m.path and m.path.exists() else 0

    async def _make_room(self, m: ManagedModel, cap: Capability) -> None:
        """Evict least recently used idle models until the new one fits the memory budget."""
        budget = self.memory_budget_bytes
        if budget is None:
            return
        need = self._footprint(m) * 2  # weights + a KV/compute allowance until the real plan is known
        loaded = sorted(
            (x for x in self.models.values() if x.engine is not None and x is not m), key=lambda x: x.last_used
        )
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
            raise ModelError(
                f"not enough memory to load '{m.id}' next to the models in use "
                f"(budget {budget / 2**30:.1f} GiB); unload a model or raise --memory-budget",
                503,
                "insufficient_memory",
            )

    @staticmethod
    def _busy(m: ManagedModel) -> bool:
        if m.engine is None:
            return False
        c = m.engine.counts()
        return c["in_flight"] > 0 or c["queued"] > 0

    async def unload(self, model_id: str, force: bool = False) -> None:
        m = self.get(model_id)
        if m is None:
            raise ModelError(f"unknown model '{model_id}'", 404, "model_not_found")
        if m.engine is None:
            return
        if self._busy(m) and not force:
            raise ModelError(f"the model '{m.id}' is answering requests; retry when they are done", 409, "model_busy")
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
        marker_path(path).unlink(missing_ok=True)
        self._registry.pop(m.id, None)
        self._write_registry()
        del self.models[m.id.lower()]
        self._publish({"type": "model_state", "model": m.id, "state": "deleted", "error": None})

    # -- pulls -------------------------------------------------------------------------------------------

    def _downloader_for_loop(self) -> Downloader:
        if self._downloader is None:
            self._downloader = Downloader(self.models_dir, self.partial_dir, on_progress=self._on_progress)
        return self._downloader

    def _on_progress(self, p: DownloadProgress) -> None:
        m = self.get(p.id)
        snap = {
            "state": p.state,
            "total_bytes": p.total_bytes,
            "done_bytes": p.done_bytes,
            "rate_bps": round(p.rate_bps, 1),
            "eta_seconds": None if p.eta_seconds is None else round(p.eta_seconds, 1),
            "error": p.error,
        }
        if m is not None:
            m.download = snap
        self._publish({"type": "download_progress", "model": p.id, **snap})

    def resolve(self, ref: str) -> ModelRef:
        try:
            return resolve_reference(ref, self.catalog)
        except UnknownModelError as e:
            raise ModelError(str(e), 404, "model_not_found") from None

    def start_pull(self, ref: str) -> ManagedModel:
        """Begin fetching a model (catalog id, repo/file or URL); returns at once. Pulling a model that
        is already on disk or already downloading does nothing more."""
        mref = self.resolve(ref)
        if mref.entry is not None and mref.entry.embedded:
            mref = replace(mref, id=DEFAULT_MODEL_ID)  # one id for the default model, however it was named
        m = self.get(mref.id)
        if m is not None and (m.id.lower() in self._pulls or (m.path is not None and m.path.exists())):
            return m
        if m is None:
            m = ManagedModel(mref.id, None, ref, mref.sha256, state=AVAILABLE)
            self.models[mref.id.lower()] = m
        m.source, m.download, m.error = ref, None, None
        self._set(m, DOWNLOADING)
        task = asyncio.get_running_loop().create_task(self._pull(m, mref))
        self._pulls[m.id.lower()] = task
        key = m.id.lower()
        task.add_done_callback(lambda t: self._pulls.pop(key, None))
        return m

    async def wait_pull(self, model_id: str) -> ManagedModel:
        task = self._pulls.get(model_id.lower())
        if task is not None:
            await asyncio.shield(task)
        m = self.get(model_id)
        if m is None:
            raise ModelError(f"unknown model '{model_id}'", 404, "model_not_found")
        if m.state == ERROR:
            raise ModelError(m.error or "the download failed", 502, "download_failed")
        return m

    async def _pull(self, m: ManagedModel, mref: ModelRef) -> None:
        try:
            if mref.entry is not None and mref.entry.embedded:
                path = await asyncio.to_thread(ensure_default_model, self.models_dir)
                m.embedded_default = True
                self.register_file(m.id, path, mref.id, mref.entry.sha256)
                return
            if mref.kind in ("hf", "catalog") and mref.repo and mref.file:
                cached = await asyncio.to_thread(hf.find_in_hf_cache, mref.repo, mref.file, mref.revision)
                if cached is not None:
                    log.info("reusing %s from the Hugging Face cache: %s", m.id, cached)
                    self.register_file(m.id, cached, m.source, mref.sha256)
                    return
                job = hf.download_job(
                    m.id,
                    mref.repo,
                    mref.file,
                    revision=mref.revision,
                    expected_sha256=mref.sha256,
                    expected_size=mref.entry.size_bytes if mref.entry else None,
                )
            else:
                assert mref.url is not None
                job = DownloadJob(
                    id=m.id, url=mref.url, filename=Path(mref.url.split("?")[0]).name, expected_sha256=mref.sha256
                )
            path = await self._downloader_for_loop().pull(job)
            self.register_file(m.id, path, m.source, verified_sha256(path) or mref.sha256)
        except asyncio.CancelledError:
            self._set(m, AVAILABLE if m.path is None else ON_DISK, "the download was stopped")
            raise
        except DownloadCancelled:
            m.download = None
            self._set(m, AVAILABLE if m.path is None else ON_DISK)
        except DownloadError as e:
            self._set(m, ERROR, str(e))
        except Exception as e:  # a bug must still surface as a state, not a silent hang
            log.exception("pull of %s failed", m.id)
            self._set(m, ERROR, f"the download failed: {e}")

    def cancel_pull(self, model_id: str) -> bool:
        m = self.get(model_id)
        if m is None or m.id.lower() not in self._pulls:
            return False
        cancelled = self._downloader_for_loop().cancel(m.id)
        if not cancelled:
            self._pulls[m.id.lower()].cancel()
        return True

    # -- listings ---------------------------------------------------------------------------------------

    def listing(self, cap: Capability | None, ctx: int, slots: int) -> dict[str, Any]:
        """Catalog + local models, with state and fit for this machine."""
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        best = recommend(self.catalog, cap, ctx, slots) if cap else None
        for e in self.catalog:
            m = self.get(e.id) or (self.get(DEFAULT_MODEL_ID) if e.embedded else None)
            row = {
                "id": e.id,
                "family": e.family,
                "repo": e.repo,
                "file": e.file,
                "quant": e.quant,
                "size_bytes": e.estimated_size_bytes(),
                "size_is_estimate": e.size_is_estimate,
                "parameters": e.parameters,
                "context_length": e.context_length,
                "license": e.license,
                "default_quant": e.default,
                "recommended": best is not None and best.id == e.id,
                "state": m.state if m else AVAILABLE,
                "local": m.public() if m else None,
            }
            if cap is not None:
                f = assess_fit(e, cap, ctx, slots)
                row["fit"] = {
                    "kind": f.kind,
                    "gpu_layers": f.gpu_layers,
                    "total_layers": f.total_layers,
                    "needed_bytes": f.needed_bytes,
                    "available_bytes": f.available_bytes,
                    "label": f.label,
                }
            rows.append(row)
            if m:
                seen.add(m.id.lower())
        local = [m.public() for k, m in self.models.items() if k not in seen]
        return {"catalog": rows, "local": local, "recommended": best.id if best else None}

    # -- idle unloading ------------------------------------------------------------------------------

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())

    async def _reap_idle(self) -> None:
        interval = max(0.2, min(10.0, self.ttl_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for m in list(self.models.values()):
                if (
                    m.engine is not None
                    and not m.pinned
                    and not self._busy(m)
                    and now - m.last_used >= self.ttl_seconds
                    and not self._lock.locked()
                ):
                    log.info("unloading %s: idle for %.0f s", m.id, now - m.last_used)
                    async with self._lock:
                        if m.engine is not None and not self._busy(m):
                            await self._unload(m)

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        if self._downloader is not None:
            await self._downloader.close()  # partial files are kept: the next run resumes them
        loads = [m._load for m in self.models.values() if m._load and not m._load.done()]
        for t in loads:
            t.cancel()
        await asyncio.gather(*loads, return_exceptions=True)
        for m in self.models.values():
            if m.engine is not None:
                engine, m.engine = m.engine, None
                await asyncio.to_thread(engine.close)

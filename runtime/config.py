"""Settings and data paths.

All user state lives under platformdirs' folders; ``CLOSEDMESH_HOME`` points every one of them at a
single folder (tests always set it).
"""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

APP_NAME = "ClosedMesh"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9337


@dataclass(frozen=True)
class Paths:
    config: Path
    data: Path
    cache: Path
    logs: Path

    @property
    def models(self) -> Path:
        return self.data / "models"

    @classmethod
    def resolve(cls) -> "Paths":
        home = os.environ.get("CLOSEDMESH_HOME")
        if home:
            root = Path(home).expanduser().resolve()
            return cls(root / "config", root / "data", root / "cache", root / "logs")
        return cls(
            Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)),
            Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)),
            Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)),
            Path(platformdirs.user_log_dir(APP_NAME, appauthor=False)),
        )

    def ensure(self) -> None:
        for p in (self.config, self.data, self.cache, self.logs, self.models):
            p.mkdir(parents=True, exist_ok=True)


def _read_or_create_secret_file(path: Path, make: "callable[[], str]") -> str:
    """A small per-user secret/identifier file, readable by its owner only."""
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)
    return value


def node_id(paths: Paths) -> str:
    """A stable identifier for this node, created on first use."""
    return _read_or_create_secret_file(paths.config / "node-id", lambda: uuid.uuid4().hex)


def admin_token(paths: Paths) -> str:
    """The local admin token required by state-changing control endpoints (file mode 0600)."""
    return _read_or_create_secret_file(paths.config / "admin-token", lambda: secrets.token_urlsafe(32))


@dataclass
class ServeSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    models: list[str] = field(default_factory=list)
    # Engine
    slots: int | None = None  # parallel sequences per model; None: chosen from the hardware
    ctx_per_slot: int | None = None  # None: min(model's trained context, 4096)
    threads: int | None = None  # None: physical cores
    gpu_layers: int | None = None  # None: as many as fit
    max_queue: int = 64  # requests waiting for a slot before 503
    kv_type: str = "f16"  # KV cache element type: "f16" or "q8_0"
    model_ttl: float = 900.0  # seconds an on-demand model stays loaded while idle
    memory_budget_bytes: int | None = None  # loaded models' weights + KV; None: 80% of RAM at start
    # HTTP
    max_body_bytes: int = 16 * 1024 * 1024
    keepalive_seconds: float = 5.0  # SSE comment interval while a stream waits
    allowed_hosts: tuple[str, ...] = ()  # extra Host header names accepted besides loopback names
    allowed_origins: tuple[str, ...] = ()  # extra browser origins allowed to call the API
    # Mesh
    hub: bool = False  # run a private hub (embedded nats-server) in this node
    hub_host: str = "0.0.0.0"  # the hub listens on the LAN so that other machines can join
    hub_port: int = 4222

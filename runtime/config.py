"""Settings and data paths.

All user state lives under platformdirs' folders; ``CLOSEDMESH_HOME`` points every one of them at a
single folder (tests always set it).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from .errors import NodeError

log = logging.getLogger(__name__)
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
    def resolve(cls) -> Paths:
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


def read_secret_file(path: Path) -> str | None:
    """The text of a secret file, None when there is none. A file that other users may read or write
    (copied from a backup, created by hand under a default umask) is fixed to 0600 with a warning: the
    node must not go on using it silently, and its owner should know the secret may have been seen."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if os.name == "posix" and mode & 0o077:
        os.chmod(path, 0o600)
        log.warning(
            "%s was readable or writable by other users (mode %03o); its mode is now 0600. If other "
            "people use this computer, replace the secret: delete the file and restart the node.",
            path,
            mode,
        )
    return path.read_text().strip()


def _read_or_create_secret_file(path: Path, make: Callable[[], str]) -> str:
    """A small per-user secret/identifier file, readable by its owner only."""
    value = read_secret_file(path)
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
    engine_stall_timeout: float = 180.0  # seconds an engine with work may show no progress before a restart
    # HTTP
    max_body_bytes: int = 16 * 1024 * 1024  # larger bodies are answered 413 (docs/api.md, "Limits")
    read_timeout: float = 30.0  # seconds a request's head may take to arrive, and its body may stall
    keepalive_seconds: float = 5.0  # SSE comment interval while a stream waits
    allowed_hosts: tuple[str, ...] = ()  # extra Host header names accepted besides loopback names
    allowed_origins: tuple[str, ...] = ()  # extra browser origins allowed to call the API
    # Mesh
    hub: bool = False  # run a private hub (embedded nats-server) in this node
    hub_host: str = "0.0.0.0"  # the hub listens on the LAN so that other machines can join
    hub_port: int = 4222
    # Entry
    entry: bool = False  # a hosted entry node: open endpoints answer without naming any machine (docs/entry.md)


def parse_duration(text: str) -> float:
    """Seconds from "90", "30s", "30m", "24h" or "7d" (the CLI's invite and key lifetimes)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise NodeError(f"'{text}' is not a duration; write e.g. 30m, 24h or 7d", status=400) from None

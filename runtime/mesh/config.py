"""What this node gives the mesh and where it is a member: the user's settings, persisted in
config/mesh.json so a joined node rejoins after a restart."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class MeshLimits:
    """What this node gives the mesh (the user sets these)."""

    max_tokens: int = 2048  # per mesh request
    max_concurrent: int = 4  # mesh requests running here at once
    reserved_local_slots: int = 1  # slots per model that mesh requests never take

    def update(self, d: dict) -> MeshLimits:
        out = MeshLimits(**asdict(self))
        for k in ("max_tokens", "max_concurrent", "reserved_local_slots"):
            if k in d:
                v = d[k]
                lo = 0 if k == "reserved_local_slots" else 1
                if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                    raise ValueError(f"'{k}' must be an integer of at least {lo}")
                setattr(out, k, v)
        return out


@dataclass
class MeshConfig:
    """Persisted in config/mesh.json so a joined node rejoins after a restart."""

    joined: bool = False
    mode: str = "open"  # "hub": authenticated with this node's key; "open": a NATS URL without auth
    urls: list[str] = field(default_factory=list)
    name: str = ""
    limits: MeshLimits = field(default_factory=MeshLimits)
    tls: str | None = None  # a private hub's certificate (base64 DER), pinned

    @classmethod
    def load(cls, path: Path) -> MeshConfig:
        if not path.exists():
            return cls()
        try:
            d = json.loads(path.read_text())
            return cls(
                bool(d.get("joined")),
                d.get("mode", "open"),
                list(d.get("urls", [])),
                d.get("name", ""),
                MeshLimits().update(d.get("limits", {})),
                d.get("tls"),
            )
        except (ValueError, TypeError) as e:
            log.error("ignoring a damaged %s: %s", path, e)
            return cls()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

"""The app's own settings (a JSON file in the config folder).

The node keeps its own state (whether it is in the mesh, its share limits: config/mesh.json); this file
holds only what the app decides: which port to start the node on, which mesh to join (an invite or a
URL) and under which name, and whether the first-run welcome was shown. A missing or damaged file gives
the defaults (and a damaged one is kept aside, never silently overwritten). No Qt here.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from runtime.config import DEFAULT_PORT

log = logging.getLogger(__name__)

SETTINGS_FILE = "app-settings.json"

# Share limits shown before the node reports its own (the fields of GET /api/mesh "limits").
DEFAULT_LIMITS = {"max_tokens": 2048, "max_concurrent": 4, "reserved_local_slots": 1}


def is_mesh_url(target: str) -> bool:
    """An open mesh's address (nats://…: reusable), not an invite token (cmi1.…: single-use)."""
    return "://" in target


@dataclass
class AppSettings:
    port: int = DEFAULT_PORT
    welcome_shown: bool = False
    mesh_invite: str = ""  # the mesh to join: an invite token (cmi1.…) or a nats:// URL (an open mesh)
    mesh_name: str = ""  # this computer's name in the mesh; empty: the node's default (the host name)

    def join_body(self) -> dict[str, str] | None:
        """The body of POST /api/mesh/join, or None when no mesh was chosen yet."""
        invite = self.mesh_invite.strip()
        if not invite:
            return None
        body = {"invite": invite}
        if self.mesh_name.strip():
            body["name"] = self.mesh_name.strip()
        return body

    def forget_spent_invite(self, invite: str) -> bool:
        """After a join with ``invite``: an invite token is single-use, so it is forgotten (the node keeps
        its membership and rejoins without one); a mesh URL is kept. True when the setting changed."""
        invite = invite.strip()
        if not invite or is_mesh_url(invite) or self.mesh_invite.strip() != invite:
            return False
        self.mesh_invite = ""
        return True

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AppSettings:
        """Known fields with the right types; anything else is ignored (a newer app's settings, a typo)."""
        s = cls()
        for f in fields(cls):
            if f.name not in data:
                continue
            v = data[f.name]
            default = getattr(s, f.name)
            if isinstance(default, bool):
                if isinstance(v, bool):
                    setattr(s, f.name, v)
            elif isinstance(default, int):
                if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536:
                    setattr(s, f.name, v)
            elif isinstance(default, str) and isinstance(v, str):
                setattr(s, f.name, v)
        return s


class SettingsStore:
    """Loads and saves :class:`AppSettings` at ``<config>/app-settings.json`` (mode 0600: it may hold an
    invite that grants access to a private mesh)."""

    def __init__(self, config_dir: Path) -> None:
        self.path = config_dir / SETTINGS_FILE

    def load(self) -> AppSettings:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return AppSettings()
        except OSError as e:
            log.warning("could not read %s (%s); using the defaults", self.path, e)
            return AppSettings()
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            aside = self.path.with_suffix(".json.damaged")
            log.warning("%s is damaged (%s); kept as %s, using the defaults", self.path, e, aside)
            os.replace(self.path, aside)
            return AppSettings()
        return AppSettings.from_json(data)

    def save(self, settings: AppSettings) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(settings), f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, self.path)

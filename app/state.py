"""What the app knows about its node, as plain data, and the pure functions over it.

The node tells the app everything through ``GET /api/events`` (a ``status`` snapshot first, then
changes) and ``GET /api/status``. :func:`apply_event` folds each of them into a new
:class:`NodeState`; the tray and the window only ever render a ``NodeState`` through the functions
below (icon kind, status line, formatting), which the tests call directly. No Qt here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Literal

TrayKind = Literal["starting", "solo", "joined", "serving", "error"]
TRAY_KINDS: tuple[TrayKind, ...] = ("starting", "solo", "joined", "serving", "error")

# Model states the runtime reports (runtime/models/manager.py), in plain words for the user.
MODEL_STATE_WORDS = {
    "available": "Not downloaded",
    "downloading": "Downloading",
    "on_disk": "Downloaded",
    "loading": "Loading…",
    "ready": "Loaded",
    "unloading": "Unloading…",
    "restarting": "Restarting after a crash…",
    "error": "Error",
}

# Mesh states of the contract (GET /api/mesh), in plain words.
MESH_STATE_WORDS = {
    "off": "Not joined",
    "connecting": "Connecting…",
    "joined": "Joined",
    "reconnecting": "Reconnecting…",
    "error": "Error",
}

LOCAL_MODEL_STATES = ("on_disk", "loading", "ready", "unloading")


@dataclass(frozen=True)
class NodeState:
    """Everything the UI shows, as last reported by the node."""

    connected: bool = False  # the events stream is open
    status: dict[str, Any] | None = None  # the last /api/status document (kept current by events)
    mesh: dict[str, Any] | None = None  # the mesh object without peers; None: not reported (yet)
    mesh_supported: bool | None = None  # False: this node has no mesh API; None: not known yet
    peers: tuple[dict[str, Any], ...] = ()
    downloads: dict[str, dict[str, Any]] = field(default_factory=dict)  # model id → last download_progress
    start_error: str | None = None  # the runtime could not start (port, model), in plain words


# -- folding events into the state ----------------------------------------------------------------------


def apply_event(state: NodeState, name: str, data: Any) -> NodeState:
    """The state after one event of ``/api/events`` (``name`` is its ``event:`` line). Unknown events
    leave the state as it was: an older app keeps working against a newer node."""
    if not isinstance(data, dict):
        return state
    if name == "status":
        return apply_status(state, data)
    if name == "model_state":
        return _apply_model_state(state, data)
    if name == "download_progress":
        mid = data.get("model")
        if not isinstance(mid, str):
            return state
        downloads = dict(state.downloads)
        downloads[mid.lower()] = data
        return replace(state, downloads=downloads)
    if name == "node_ready":
        if state.status is None:
            return state
        status = copy.deepcopy(state.status)
        status.setdefault("node", {})["ready"] = bool(data.get("ready"))
        return replace(state, status=status)
    if name == "mesh":
        mesh = {k: v for k, v in data.items() if k not in ("type", "peers")}
        return replace(state, mesh=mesh, mesh_supported=True)
    if name == "peers":
        peers = data.get("peers")
        if not isinstance(peers, list):
            return state
        return replace(state, peers=tuple(p for p in peers if isinstance(p, dict)))
    return state


def apply_status(state: NodeState, status: dict[str, Any]) -> NodeState:
    """A full /api/status document (the first event of the stream, and every poll)."""
    peers = status.get("peers")
    mesh = status.get("mesh")
    return replace(
        state,
        status=status,
        peers=tuple(p for p in peers if isinstance(p, dict)) if isinstance(peers, list) else state.peers,
        mesh={k: v for k, v in mesh.items() if k != "peers"} if isinstance(mesh, dict) else state.mesh,
        # a node that reports no "mesh" in its status was built without the mesh
        mesh_supported=True if isinstance(mesh, dict) else (state.mesh_supported if state.mesh_supported else False),
        start_error=None,
    )


def apply_mesh(state: NodeState, mesh: dict[str, Any]) -> NodeState:
    """A mesh object as answered by GET /api/mesh or the join/leave/limits calls (peers included)."""
    new = apply_event(state, "mesh", mesh)
    if isinstance(mesh.get("peers"), list):
        new = apply_event(new, "peers", {"peers": mesh["peers"]})
    return new


def _apply_model_state(state: NodeState, ev: dict[str, Any]) -> NodeState:
    mid, new_state = ev.get("model"), ev.get("state")
    if not isinstance(mid, str) or not isinstance(new_state, str):
        return state
    downloads = state.downloads
    if new_state != "downloading" and mid.lower() in downloads:
        downloads = {k: v for k, v in downloads.items() if k != mid.lower()}
    if state.status is None:
        return replace(state, downloads=downloads)
    status = copy.deepcopy(state.status)
    models = status.setdefault("models", [])
    if new_state == "deleted":
        status["models"] = [m for m in models if str(m.get("id", "")).lower() != mid.lower()]
    else:
        for m in models:
            if str(m.get("id", "")).lower() == mid.lower():
                m["state"] = new_state
                if ev.get("error"):
                    m["error"] = ev["error"]
                else:
                    m.pop("error", None)
                break
        else:
            models.append({"id": mid, "state": new_state, **({"error": ev["error"]} if ev.get("error") else {})})
    return replace(state, status=status, downloads=downloads)


# -- reading the state ------------------------------------------------------------------------------------


def node_ready(state: NodeState) -> bool:
    return bool(state.status and (state.status.get("node") or {}).get("ready"))


def node_errors(state: NodeState) -> list[str]:
    """Plain-words problems that stop the node from serving what it was started with."""
    if state.start_error:
        return [state.start_error]
    if not state.status:
        return []
    return [
        f"{m.get('id')}: {m.get('error') or 'failed to load'}"
        for m in state.status.get("models", [])
        if m.get("state") == "error" and m.get("pinned")
    ]


def mesh_state(state: NodeState) -> str:
    return str((state.mesh or {}).get("state") or "off")


def requests_in_flight(state: NodeState) -> int:
    return int(((state.status or {}).get("requests") or {}).get("in_flight") or 0)


def wants_mesh(state: NodeState) -> bool:
    """The node is set to be in the mesh (it rejoins by itself after a restart or a dropped connection):
    its mesh status has a ``mode`` then. A node that does not say falls back to its state."""
    mesh = state.mesh or {}
    if "mode" in mesh:
        return bool(mesh.get("mode"))
    return mesh_state(state) in ("joined", "connecting", "reconnecting")


def saved_mesh_urls(state: NodeState) -> list[str]:
    """The mesh the node was last in (GET /api/mesh ``urls``, kept after a leave): a join without an
    invite rejoins it. Empty when the node has none (or does not say)."""
    urls = (state.mesh or {}).get("urls")
    return [u for u in urls if isinstance(u, str) and u] if isinstance(urls, list) else []


def serving_mesh_requests(state: NodeState) -> int:
    """Requests from peers running here now (all requests in flight when the node does not tell them apart)."""
    mesh = state.mesh or {}
    if isinstance(mesh.get("serving_mesh_requests"), int):
        return mesh["serving_mesh_requests"]
    return requests_in_flight(state)


def local_models(state: NodeState) -> list[dict[str, Any]]:
    """Models on this machine (downloaded, loading, loaded), in the node's order."""
    return [m for m in (state.status or {}).get("models", []) if m.get("state") in LOCAL_MODEL_STATES]


def ready_model_ids(state: NodeState) -> list[str]:
    return [m["id"] for m in (state.status or {}).get("models", []) if m.get("state") == "ready"]


def routable_model_count(state: NodeState) -> int:
    """Distinct models a request can name: this node's (on disk or loaded) and, when joined, every
    model a live peer serves."""
    ids = {str(m.get("id")).lower() for m in local_models(state)}
    if mesh_state(state) == "joined":
        for p in state.peers:
            if p.get("state", "live") == "live":
                ids.update(str(m.get("id")).lower() for m in p.get("models") or [] if isinstance(m, dict))
    return len(ids)


def live_peer_count(state: NodeState) -> int:
    return sum(1 for p in state.peers if p.get("state", "live") == "live")


def backend_words(backend: str | None) -> str | None:
    if not backend:
        return None
    return {"cpu": "CPU", "cuda": "CUDA", "metal": "Metal"}.get(str(backend).lower(), str(backend))


def backend_name(state: NodeState) -> str | None:
    return backend_words(((state.status or {}).get("capability") or {}).get("backend"))


def tray_kind(state: NodeState) -> TrayKind:
    """Which icon the tray shows.

    ``error``: the node cannot serve (start failed, a model it was started with failed), or the mesh
    failed while the node is set to be in it. ``starting``: not ready yet, or connecting to the mesh.
    ``serving``: joined and answering requests from peers right now. ``joined``: in the mesh.
    ``solo``: serving this machine only.
    """
    if node_errors(state):
        return "error"
    ms = mesh_state(state)
    if ms == "error" and wants_mesh(state):
        return "error"
    if not state.connected or not node_ready(state):
        return "starting"
    if ms in ("connecting", "reconnecting"):
        return "starting"
    if ms == "joined":
        return "serving" if serving_mesh_requests(state) > 0 else "joined"
    return "solo"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def status_line(state: NodeState) -> str:
    """One line for the top of the tray menu, e.g. "Joined · 12 peers · 9 models · CUDA"."""
    errors = node_errors(state)
    if errors:
        return "Error: " + errors[0]
    if not state.connected and state.status is None:
        return "Starting…"
    if not state.connected:
        return "Not connected to the node…"
    if not node_ready(state):
        return "Starting… (loading models)"
    parts: list[str] = []
    ms = mesh_state(state)
    if ms == "joined":
        parts.append("Serving peers" if serving_mesh_requests(state) else "Joined")
        parts.append(_plural(live_peer_count(state), "peer"))
    elif ms in ("connecting", "reconnecting"):
        parts.append(MESH_STATE_WORDS[ms])
    elif ms == "error" and wants_mesh(state):
        parts.append("Mesh error")
    else:
        parts.append("Solo")
    parts.append(_plural(routable_model_count(state), "model"))
    b = backend_name(state)
    if b:
        parts.append(b)
    return " · ".join(parts)


def tooltip(state: NodeState, port: int | None) -> str:
    line = f"ClosedMesh — {status_line(state)}"
    return f"{line}\nhttp://localhost:{port}/v1" if port else line


# -- formatting -------------------------------------------------------------------------------------------


def format_bytes(n: float | None) -> str:
    """Decimal units, as download sizes are usually shown: 98 MB, 4.7 GB."""
    if n is None:
        return "—"
    n = float(n)
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.1f} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{n:.0f} B"


def format_rate(bps: float | None) -> str:
    if not bps or bps <= 0:
        return "—"
    return f"{format_bytes(bps)}/s"


def format_duration(seconds: float | None) -> str:
    """A short human duration: 45 s, 3 min 20 s, 2 h 5 min."""
    if seconds is None or seconds < 0:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s} s" if s and m < 10 else f"{m} min"
    h, m = divmod(m, 60)
    return f"{h} h {m} min" if m else f"{h} h"


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "time left unknown"
    if seconds < 1:
        return "almost done"
    return f"{format_duration(seconds)} left"


def download_fraction(progress: dict[str, Any] | None) -> float | None:
    """0..1, or None when the total size is not known."""
    if not progress:
        return None
    total, done = progress.get("total_bytes"), progress.get("done_bytes") or 0
    if not total:
        return None
    return max(0.0, min(1.0, done / total))


def download_text(progress: dict[str, Any] | None) -> str:
    """E.g. "48 MB of 98 MB · 12.5 MB/s · 4 s left"."""
    if not progress:
        return ""
    state = progress.get("state")
    if state == "queued":
        return "Waiting for another download to finish…"
    if state == "verifying":
        return "Checking the file…"
    done, total = progress.get("done_bytes") or 0, progress.get("total_bytes")
    size = f"{format_bytes(done)} of {format_bytes(total)}" if total else format_bytes(done)
    if state == "done":
        return f"{format_bytes(total or done)} downloaded"
    return f"{size} · {format_rate(progress.get('rate_bps'))} · {format_eta(progress.get('eta_seconds'))}"


def format_tps(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f} tok/s"


def format_ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"

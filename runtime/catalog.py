"""The throughput catalog and the open status document (docs/entry.md, "Status catalog").

Pure functions over plain data: the node hands in its own windows (runtime/stats.py) and the model
entries its peers announced; nothing here does I/O. ``build_catalog`` is what ``/api/status`` carries on
every node; ``open_status_document`` is the whole of ``/api/status`` on an entry node, built only from model ids
and numbers so that it cannot carry a key, a prompt, an address, a URL, a host name or a peer name.

Which statistic each figure is:
- ``measured``: this node's own samples, seen by its HTTP clients end to end (local and mesh answers);
  ``tps_p50`` / ``ttft_ms_p50`` are medians over the answers in the window.
- ``native``: the serving engine's own samples on this node (only for models this node serves).
- ``mesh``: across the live peers that serve the model, from what each announced (its native figures):
  ``tps_p50_median`` is the median of the peers' tok/s medians, ``ttft_ms_p50_best`` the lowest of
  their TTFT medians, ``samples`` the sum of the samples behind them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from . import __version__
from .stats import WINDOW_SAMPLES, WINDOW_SECONDS

# Ranges a figure must fall in to be used; the same bounds protocol.validate_announcement applies to
# what peers announce (a peer's figures are hostile input).
MAX_TPS = 1e7
MAX_TTFT_MS = 1e9
MAX_SAMPLES = 10**9
MAX_WINDOW_SECONDS = 1e7

PUBLIC_MAPS = (
    "measured_tps_p50_by_model",
    "measured_ttft_ms_p50_by_model",
    "native_tps_p50_by_model",
    "native_ttft_ms_p50_by_model",
)


def _number(v: object, hi: float) -> float | None:
    """``v`` as a float when it is a finite number from 0 to ``hi`` (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= hi:
        return None
    return float(v)


def _count(v: object, hi: int) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= hi else None


def _own_figures(summary: Mapping[str, Any] | None) -> dict | None:
    """A ``RollingStats.summary()`` → the catalog's figures, None without samples."""
    if not summary or not summary.get("samples"):
        return None
    return {
        "tps_p50": _number(summary.get("tokens_per_second_p50"), MAX_TPS),
        "ttft_ms_p50": _number(summary.get("ttft_ms_p50"), MAX_TTFT_MS),
        "samples": int(summary["samples"]),
    }


def mesh_figures(entries: Iterable[Mapping[str, Any]]) -> dict:
    """The model entries the live peers serving one model announced (one per peer) → the mesh's
    figures for it. Figures out of range or of the wrong type count as not announced."""
    entries = list(entries)
    tps = [x for e in entries if (x := _number(e.get("tokens_per_second_p50"), MAX_TPS)) is not None and x > 0]
    ttft = [x for e in entries if (x := _number(e.get("ttft_ms_p50"), MAX_TTFT_MS)) is not None and x > 0]
    ctx = [x for e in entries if (x := _count(e.get("context_length"), 2**31)) is not None and x > 0]
    samples = [x for e in entries if (x := _count(e.get("samples"), MAX_SAMPLES)) is not None]
    windows = [x for e in entries if (x := _number(e.get("window_seconds"), MAX_WINDOW_SECONDS)) is not None]
    return {
        "peers": len(entries),
        "peers_measured": len(tps),
        "tps_p50_median": round(statistics.median(tps), 2) if tps else None,
        "ttft_ms_p50_best": round(min(ttft), 2) if ttft else None,
        "samples": sum(samples) if samples else None,
        "window_seconds": max(windows) if windows else None,
        "context_length": min(ctx) if ctx else None,
        "free_slots": sum(_count(e.get("free_slots"), 2**31) or 0 for e in entries),
    }


def build_catalog(
    local: Mapping[str, int | None],
    native: Mapping[str, Mapping[str, Any]],
    measured: Mapping[str, Mapping[str, Any]],
    mesh: Mapping[str, Iterable[Mapping[str, Any]]],
) -> dict:
    """The throughput catalog.

    ``local``: the models this node serves → their context length (None until loaded); ``native`` and
    ``measured``: model id → this node's ``RollingStats.summary()`` of that kind; ``mesh``: model id →
    the entries its live peers announced for it. Ids are matched without regard to case, spelled as
    this node serves them (else as first seen)."""
    spelling: dict[str, str] = {}
    for mid in [*local, *mesh, *measured, *native]:
        spelling.setdefault(mid.lower(), mid)
    local_ctx = {k.lower(): v for k, v in local.items()}
    native_l = {k.lower(): v for k, v in native.items()}
    measured_l = {k.lower(): v for k, v in measured.items()}
    mesh_l = {k.lower(): list(v) for k, v in mesh.items()}
    models: dict[str, dict] = {}
    for low in sorted(spelling, key=lambda k: spelling[k]):
        peers = mesh_figures(mesh_l[low]) if mesh_l.get(low) else None
        ctx = [c for c in (local_ctx.get(low), peers and peers["context_length"]) if c]
        models[spelling[low]] = {
            "served_here": low in local_ctx,
            "peers": peers["peers"] if peers else 0,
            "context_length": min(ctx) if ctx else None,
            "measured": _own_figures(measured_l.get(low)),
            "native": _own_figures(native_l.get(low)),
            "mesh": peers,
        }
    return {
        "window": {"max_samples": WINDOW_SAMPLES, "max_age_seconds": WINDOW_SECONDS},
        "models": models,
    }


def public_maps(catalog: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The four per-model maps under the public status's names; a model without a figure is absent
    (absent = not measured, never 0)."""
    out: dict[str, dict[str, float]] = {name: {} for name in PUBLIC_MAPS}
    for mid, m in catalog["models"].items():
        for kind in ("measured", "native"):
            fig = m.get(kind) or {}
            if fig.get("tps_p50") is not None:
                out[f"{kind}_tps_p50_by_model"][mid] = fig["tps_p50"]
            if fig.get("ttft_ms_p50") is not None:
                out[f"{kind}_ttft_ms_p50_by_model"][mid] = fig["ttft_ms_p50"]
    return out


def model_extension(record: Mapping[str, Any]) -> dict:
    """One catalog record (``build_catalog(...)["models"][id]``, or {} for none) → the throughput fields
    of that model's ``closedmesh`` object in ``/v1/models``, each named for the statistic it is."""
    measured = record.get("measured") or {}
    native = record.get("native") or {}
    mesh = record.get("mesh") or {}
    return {
        "measured_tps_p50": measured.get("tps_p50"),
        "measured_ttft_ms_p50": measured.get("ttft_ms_p50"),
        "measured_samples": measured.get("samples", 0),
        "native_tps_p50": native.get("tps_p50"),
        "native_ttft_ms_p50": native.get("ttft_ms_p50"),
        "native_samples": native.get("samples", 0),
        "mesh_tps_p50_median": mesh.get("tps_p50_median"),
        "mesh_ttft_ms_p50_best": mesh.get("ttft_ms_p50_best"),
        "mesh_samples": mesh.get("samples"),
        "mesh_peers_measured": mesh.get("peers_measured", 0),
    }


def _open_figures(fig: Mapping[str, Any] | None, keys: tuple[str, ...]) -> dict | None:
    return None if fig is None else {k: fig.get(k) for k in keys}


def open_status_document(catalog: Mapping[str, Any], *, ready: bool, mesh_connected: bool) -> dict:
    """``/api/status`` of an entry node, readable by anyone: the throughput catalog and per-model counts,
    rebuilt field by field from ``catalog`` (ids and numbers only). No key, prompt, node id or address,
    URL, host name or peer name can reach it: none of them is an input."""
    own = ("tps_p50", "ttft_ms_p50", "samples")
    mesh = ("peers", "peers_measured", "tps_p50_median", "ttft_ms_p50_best", "samples", "window_seconds")
    models = {
        str(mid): {
            "peers": int(m["peers"]),
            "context_length": m["context_length"],
            "free_slots": (m["mesh"] or {}).get("free_slots", 0),
            "measured": _open_figures(m["measured"], own),
            "native": _open_figures(m["native"], own),
            "mesh": _open_figures(m["mesh"], mesh),
        }
        for mid, m in catalog["models"].items()
    }
    window = catalog["window"]
    doc: dict[str, Any] = {
        "object": "closedmesh.status",
        "version": __version__,
        "entry": True,
        "ready": bool(ready),
        "mesh": {"connected": bool(mesh_connected), "models": sum(1 for m in models.values() if m["peers"])},
        "catalog": {
            "window": {"max_samples": window["max_samples"], "max_age_seconds": window["max_age_seconds"]},
            "models": models,
        },
    }
    doc.update(public_maps(catalog))
    return doc

"""The Models tab's rows, as plain data: the node's listing (``GET /api/models``) merged with the newer
states and download progress the events brought since. No Qt here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .state import MODEL_STATE_WORDS, NodeState, download_fraction, download_text, format_bytes

# Actions a row offers, by the model's state (ids of buttons in the tab).
ACTIONS_BY_STATE: dict[str, tuple[str, ...]] = {
    "available": ("download",),
    "downloading": ("cancel",),
    "on_disk": ("load", "delete"),
    "ready": ("unload", "delete"),
    "loading": (),
    "unloading": (),
    "restarting": (),
}

ACTION_WORDS = {"download": "Download", "cancel": "Cancel", "load": "Load", "unload": "Unload", "delete": "Delete"}


@dataclass(frozen=True)
class ModelRow:
    id: str  # the id actions use (the local model's id when it is on this machine)
    title: str
    detail: str  # family, parameters, quantization, context, licence
    size: str
    fit: str  # plain words: does it fit this machine
    fit_kind: str | None  # gpu / partial / cpu / too_large
    state: str
    state_text: str
    recommended: bool
    pinned: bool
    on_machine: bool
    progress: float | None  # 0..1 while downloading with a known size
    progress_text: str
    actions: tuple[str, ...]
    error: str | None


def _params(n: Any) -> str:
    if not isinstance(n, (int, float)) or n <= 0:
        return ""
    return f"{n / 1e9:.1f}B params" if n >= 1e9 else f"{n / 1e6:.0f}M params"


def _ctx(n: Any) -> str:
    if not isinstance(n, int) or n <= 0:
        return ""
    return f"{n // 1024}k context" if n >= 1024 else f"{n} context"


def _live_state(state: NodeState, mid: str) -> tuple[str, str | None] | None:
    for m in (state.status or {}).get("models", []):
        if str(m.get("id", "")).lower() == mid.lower():
            return str(m.get("state")), m.get("error")
    return None


def _has_file(state: NodeState, mid: str) -> bool:
    for m in (state.status or {}).get("models", []):
        if str(m.get("id", "")).lower() == mid.lower():
            return bool(m.get("file"))
    return False


def _row(
    mid: str,
    title: str,
    detail: str,
    size: str,
    fit: dict | None,
    listed_state: str,
    listed_error: str | None,
    recommended: bool,
    pinned: bool,
    state: NodeState,
) -> ModelRow:
    live = _live_state(state, mid)
    st, err = live if live is not None else (listed_state, listed_error)
    progress = state.downloads.get(mid.lower())
    if st == "downloading" and progress is None:
        progress = {"state": "queued"}
    actions = ACTIONS_BY_STATE.get(st, ())
    if st == "error":
        # A file on this machine whose engine failed is loaded again; a failed download is retried.
        actions = ("load", "delete") if _has_file(state, mid) else ("download",)
    if pinned:
        actions = tuple(a for a in actions if a != "delete")  # served since the node's start: kept
    return ModelRow(
        id=mid,
        title=title,
        detail=detail,
        size=size,
        fit=(fit or {}).get("label") or "",
        fit_kind=(fit or {}).get("kind"),
        state=st,
        state_text=MODEL_STATE_WORDS.get(st, st.replace("_", " ").capitalize()),
        recommended=recommended,
        pinned=pinned,
        on_machine=st in ("on_disk", "loading", "ready", "unloading"),
        progress=download_fraction(progress) if st == "downloading" else None,
        progress_text=download_text(progress) if st == "downloading" else "",
        actions=actions,
        error=err if st == "error" else None,
    )


def model_rows(listing: dict[str, Any] | None, state: NodeState) -> list[ModelRow]:
    """Rows for the catalog and the local models: this machine's first, then the recommended one, then
    the rest of the catalog in its order."""
    if not listing:
        return []
    rows: list[ModelRow] = []
    for e in listing.get("catalog", []):
        local = e.get("local") or None
        mid = local["id"] if local else e["id"]
        size_n = e.get("size_bytes")
        size = ("~" if e.get("size_is_estimate") else "") + format_bytes(size_n) if size_n else "—"
        family = e.get("family")
        if family and str(e["id"]).startswith(str(family)):
            family = None  # the title says it already
        detail = " · ".join(
            x
            for x in (
                family,
                _params(e.get("parameters")),
                e.get("quant"),
                _ctx(e.get("context_length")),
                e.get("license"),
            )
            if x
        )
        rows.append(
            _row(
                mid,
                e["id"],
                detail,
                size,
                e.get("fit"),
                str(e.get("state") or "available"),
                (local or {}).get("error"),
                bool(e.get("recommended")),
                bool((local or {}).get("pinned")),
                state,
            )
        )
    for m in listing.get("local", []):
        detail = "Your file" + (f" · from {m['source']}" if m.get("source") and m.get("source") != "embedded" else "")
        rows.append(
            _row(
                m["id"],
                m["id"],
                detail,
                format_bytes(m.get("size_bytes")) if m.get("size_bytes") else "—",
                None,
                str(m.get("state") or "on_disk"),
                m.get("error"),
                False,
                bool(m.get("pinned")),
                state,
            )
        )
    listed = {r.id.lower() for r in rows}
    # pulls started since the listing was fetched (e.g. a URL typed in the tab): shown at once
    for m in (state.status or {}).get("models", []):
        if str(m.get("id", "")).lower() not in listed and m.get("state") == "downloading":
            rows.append(_row(m["id"], m["id"], "Your download", "—", None, "downloading", None, False, False, state))
    order = {"ready": 0, "loading": 0, "unloading": 0, "on_disk": 1, "downloading": 2, "error": 2}
    return sorted(rows, key=lambda r: order.get(r.state, 3 if not r.recommended else 2.5))


def recommended_row(rows: list[ModelRow]) -> ModelRow | None:
    return next((r for r in rows if r.recommended), None)

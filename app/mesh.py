"""The "Join the mesh" toggle: one click joins (or leaves) through the node's control API, with the
phase in between shown, and a plain-words message and the toggle back off when joining fails.

Contract (the node's): ``POST /api/mesh/join {"invite", "name"?}`` answers the mesh object once joined,
or an OpenAI-shaped error (400/403/502/503); ``POST /api/mesh/leave`` answers the mesh object. The node
remembers that it is in the mesh and rejoins by itself after a restart: the app keeps no wish of its
own. A node without the mesh answers 404 ``not_found`` for these routes: the toggle says so instead
of failing obscurely.

Which mesh a click joins: the invite or address in the app's settings when there is one; otherwise the
mesh the node was last in (its ``urls``, kept after a leave), with ``POST /api/mesh/join {}`` — the
node's membership needs no new invite. Invites are single-use: after a join with one the app forgets
it (``invite_spent``), so the next click after a leave rejoins instead of re-sending a spent invite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PySide6.QtCore import QObject, Signal

from .actions import NodeActions
from .client import ApiResult
from .settings import AppSettings, is_mesh_url
from .state import NodeState, mesh_state, saved_mesh_urls, wants_mesh
from .store import NodeStore

Phase = Literal["off", "joining", "joined", "leaving"]

NO_MESH_MESSAGE = (
    "Joining is not available yet: this version of the ClosedMesh node has no mesh support "
    "(it does not know the /api/mesh routes)."
)
NO_TARGET_MESSAGE = (
    "Choose the mesh first: paste the invite you were given (or the address of an open mesh, "
    "nats://…) in Settings → Mesh, then join again."
)


@dataclass(frozen=True)
class ToggleView:
    checked: bool
    enabled: bool
    text: str


def toggle_view(phase: Phase, node_mesh_state: str, supported: bool | None) -> ToggleView:
    """How the toggle looks (pure): checked, clickable, and its words."""
    if phase == "joining":
        return ToggleView(True, False, "Joining the mesh…")
    if phase == "leaving":
        return ToggleView(False, False, "Leaving the mesh…")
    if phase == "joined":
        if node_mesh_state == "reconnecting":
            return ToggleView(True, True, "Join the mesh (reconnecting…)")
        if node_mesh_state == "connecting":
            return ToggleView(True, True, "Join the mesh (connecting…)")
        return ToggleView(True, True, "Join the mesh")
    if node_mesh_state == "connecting":  # the node joins by itself (rejoining at its start)
        return ToggleView(True, False, "Joining the mesh…")
    if supported is False:
        return ToggleView(False, True, "Join the mesh (not available)")
    return ToggleView(False, True, "Join the mesh")


def phase_from_node(node_mesh_state: str) -> Phase | None:
    """The toggle's phase that the node's mesh state implies; None for "connecting", which says nothing
    yet (it may be a join that is about to fail, whose events can arrive after its answer)."""
    if node_mesh_state in ("joined", "reconnecting"):
        return "joined"
    if node_mesh_state == "connecting":
        return None
    return "off"


class MeshToggle(QObject):
    changed = Signal()  # phase or view changed
    failed = Signal(str)  # joining (or staying joined) failed: plain words for the user
    needs_target = Signal()  # no mesh chosen yet: the UI shows where to choose one
    joined = Signal()
    invite_spent = Signal(str)  # joined with this invite token: it cannot be used again

    def __init__(
        self, store: NodeStore, settings: AppSettings, actions: NodeActions, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.store = store
        self.settings = settings
        self.actions = actions
        self.phase: Phase = "off"
        self._join_sent: dict[str, str] = {}  # the body of the join in progress
        self._last_view: ToggleView | None = None
        store.changed.connect(self._sync)

    def view(self) -> ToggleView:
        s = self.store.state
        return toggle_view(self.phase, mesh_state(s), s.mesh_supported)

    def _set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self._redraw()

    def _redraw(self, force: bool = False) -> None:
        v = self.view()
        if force or v != self._last_view:
            self._last_view = v
            self.changed.emit()

    def join_body(self) -> dict[str, str] | None:
        """What a click sends to POST /api/mesh/join: the mesh chosen in Settings, else the node's saved
        mesh (no invite: the node rejoins it), else None (no mesh known: the user must choose one)."""
        body = self.settings.join_body()
        if body is not None:
            return body
        if saved_mesh_urls(self.store.state):
            name = self.settings.mesh_name.strip()
            return {"name": name} if name else {}
        return None

    def set_wanted(self, on: bool) -> None:
        """The user clicked the toggle."""
        if self.phase in ("joining", "leaving") or self.actions.client is None:
            self._redraw(force=True)  # the click is ignored while busy: put the check mark back
            return
        if on and self.phase != "joined":
            body = self.join_body()
            if body is None:
                self._redraw(force=True)  # the click put a check mark: take it back
                self.failed.emit(NO_TARGET_MESSAGE)
                self.needs_target.emit()
                return
            self._set_phase("joining")
            self._join_sent = body
            self.actions.join_mesh(body, on_done=self._joined)
        elif not on and self.phase != "off":
            self._set_phase("leaving")
            self.actions.leave_mesh(on_done=self._left)
        else:
            self._redraw(force=True)

    def _joined(self, r: ApiResult) -> None:
        if r.ok and isinstance(r.data, dict):  # the mesh object is in the store already (NodeActions)
            state = str(r.data.get("state") or "joined")
            if state in ("off", "error"):  # answered 200 but not in: treat as a failure
                self._fail(r.data.get("error") or "the node could not join the mesh")
                return
            self._set_phase("joined")
            invite = self._join_sent.get("invite") or ""
            if invite and not is_mesh_url(invite):
                self.invite_spent.emit(invite)
            self.joined.emit()
            return
        self._fail(NO_MESH_MESSAGE if r.route_missing else (r.error or "the node could not join the mesh"))

    def _fail(self, message: str) -> None:
        self._set_phase("off")
        self.failed.emit(f"Could not join the mesh: {message}")

    def _left(self, r: ApiResult) -> None:
        self._set_phase("off")
        if not r.ok and not r.route_missing:
            self.failed.emit(f"Could not leave the mesh cleanly: {r.error}")

    def _sync(self, state: NodeState) -> None:
        """Follow the node when nothing is in progress here (joined from the CLI, dropped by the hub)."""
        if self.phase in ("joining", "leaving"):
            return
        node_phase = phase_from_node(mesh_state(state))
        if node_phase is None:
            self._redraw()
            return
        if self.phase == "joined" and mesh_state(state) == "error" and wants_mesh(state):
            self.failed.emit(f"The mesh connection failed: {(state.mesh or {}).get('error') or 'unknown error'}")
        self._set_phase(node_phase)

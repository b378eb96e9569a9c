"""Settings: the API port, which mesh to join, share limits for requests from the mesh, and start at
login. (There is no API key here: a node joins a mesh with an invite or a URL, and the keys of a hosted
entry node (docs/entry.md) are for OpenAI clients that run no node, not for the node.)"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..actions import NodeActions
from ..client import ApiResult
from ..links import Links
from ..settings import DEFAULT_LIMITS, AppSettings
from ..start_at_login import StartAtLogin
from ..state import NodeState, saved_mesh_urls, wants_mesh
from ..store import NodeStore
from ..widgets import Banner, muted

LIMIT_FIELDS = (
    ("max_tokens", "Longest answer for a mesh request", "tokens", 1, 1_000_000),
    ("max_concurrent", "Mesh requests at the same time", "", 1, 256),
    ("reserved_local_slots", "Slots kept free for this computer", "", 0, 64),
)


def limits_to_show(node_limits: dict | None) -> dict[str, int]:
    """What the share-limit fields show (pure): the node's limits, the defaults where it says nothing."""
    shown = dict(DEFAULT_LIMITS)
    for k in DEFAULT_LIMITS:
        v = (node_limits or {}).get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            shown[k] = v
    return shown


def _form(parent: QWidget) -> QFormLayout:
    form = QFormLayout(parent)
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.FieldsStayAtSizeHint)
    form.setHorizontalSpacing(12)
    return form


def mesh_setting_words(state: NodeState) -> str:
    """What the node is set to now (pure)."""
    if state.mesh_supported is False:
        return "This version of the node cannot join a mesh yet."
    mesh = state.mesh or {}
    name = (mesh.get("node") or {}).get("name")
    named = f" as “{name}”" if name else ""
    urls = mesh.get("urls") or ([mesh["url"]] if mesh.get("url") else [])
    if wants_mesh(state) and urls:
        how = " (private mesh)" if mesh.get("mode") == "hub" else ""
        return f"Now: in the mesh at {', '.join(urls)}{how}{named}."
    saved = saved_mesh_urls(state)
    if saved:  # left (or a join failed): the node keeps its membership, a click rejoins without an invite
        return (
            f"Now: not in a mesh{named}. With no invite above, “Join the mesh” rejoins the mesh at {', '.join(saved)}."
        )
    return f"Now: not in a mesh{named}." if mesh else ""


class SettingsPage(QWidget):
    save_requested = Signal()  # the AppSettings were changed here: write them
    restart_on_port_requested = Signal(int)  # the node should move to this port

    def __init__(
        self,
        store: NodeStore,
        actions: NodeActions,
        links: Links,
        settings: AppSettings,
        start_at_login: StartAtLogin,
        *,
        attached: bool,
    ) -> None:
        super().__init__()
        self.store = store
        self.node_actions = actions
        self.links = links
        self.app_settings = settings  # the app's settings, edited in place and saved on request
        self.start_at_login = start_at_login
        self.attached = attached  # a node the app did not start: its port cannot be changed here
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        outer.addWidget(scroll)
        body = QWidget()
        scroll.setWidget(body)
        root = QVBoxLayout(body)
        root.setContentsMargins(16, 16, 16, 16)
        root.setSpacing(12)
        self.banner = Banner()
        root.addWidget(self.banner)
        s = settings

        # Local API
        api = QGroupBox("Local API")
        form = _form(api)
        self.port = QSpinBox()
        self.port.setRange(1024, 65535)
        self.port.setValue(s.port)
        self.port.setMinimumWidth(110)
        self.port.setEnabled(not attached)  # a node the app did not start keeps its port
        self._port_shown = s.port
        form.addRow("Port:", self.port)
        form.addRow(muted("Apps on this computer use http://localhost:PORT/v1. Changing the port restarts the node."))
        root.addWidget(api)

        # Mesh
        mesh = QGroupBox("Mesh")
        mf = _form(mesh)
        self.invite = QLineEdit(s.mesh_invite)
        self.invite.setPlaceholderText("cmi1.… invite, or nats://host:4222")
        self.invite.setMinimumWidth(420)
        mf.addRow("Invite or address:", self.invite)
        self.mesh_name = QLineEdit(s.mesh_name)
        self.mesh_name.setMinimumWidth(240)
        mf.addRow("This computer's name:", self.mesh_name)
        mf.addRow(
            muted(
                "Paste the invite the mesh's owner gave you, or the address of an open mesh. “Join the "
                "mesh” uses it; the node then remembers the mesh and rejoins it after a restart or a "
                "leave, so an invite (single-use) is cleared once it has been used. Other members see "
                "this computer's name."
            )
        )
        self.mesh_now = muted()
        mf.addRow(self.mesh_now)
        root.addWidget(mesh)

        # Share limits
        share = QGroupBox("Sharing with the mesh")
        sl = _form(share)
        self.limits: dict[str, QSpinBox] = {}
        for name, label, suffix, lo, hi in LIMIT_FIELDS:
            sb = QSpinBox()
            sb.setRange(lo, hi)
            sb.setMinimumWidth(140)
            if suffix:
                sb.setSuffix(f" {suffix}")
            self.limits[name] = sb
            sl.addRow(label + ":", sb)
        sl.addRow(
            muted(
                "Limits for requests that other computers send to this one, kept by the node. Your own "
                "requests are never limited by them."
            )
        )
        root.addWidget(share)

        # Start at login
        login = QGroupBox("Start")
        ll = QVBoxLayout(login)
        self.autostart = QCheckBox("Start ClosedMesh when I log in")
        self.autostart.setChecked(start_at_login.enabled())
        self.autostart.toggled.connect(self._autostart)
        start_at_login.changed.connect(self._show_autostart)
        ll.addWidget(self.autostart)
        root.addWidget(login)

        root.addStretch(1)

        bar = QWidget()  # outside the scroll area: always in view
        buttons = QHBoxLayout(bar)
        buttons.setContentsMargins(16, 8, 24, 8)
        buttons.addWidget(
            muted("The API key and start at login apply at once; the rest when you click Save.", wrap=False)
        )
        buttons.addStretch(1)
        self.save = QPushButton("Save")
        self.save.setDefault(True)
        self.save.setMinimumWidth(100)
        self.save.clicked.connect(self.apply)
        buttons.addWidget(self.save)
        outer.addWidget(bar)

        self._limits_from_node = False
        self._limits_shown = False
        store.changed.connect(self.show_state)
        self.show_state(store.state)

    # -- rendering -----------------------------------------------------------------------------------

    def show_state(self, state: NodeState) -> None:
        node_limits = (state.mesh or {}).get("limits")
        if node_limits and not self._limits_from_node:  # once: never overwrite what the user is typing
            self._limits_from_node = True
            self._show_limits(node_limits)
        elif not self._limits_from_node and not self._limits_shown:
            self._show_limits(None)
        self.mesh_now.setText(mesh_setting_words(state))
        running = self.links.port  # the port in use (a --port given at start wins over the setting)
        if running and running != self._port_shown and self.port.value() == self._port_shown:
            self._port_shown = running
            self.port.setValue(running)

    def forget_invite(self, invite: str) -> None:
        """The app joined with this invite and no longer keeps it: clear the field if it still shows it."""
        if self.invite.text().strip() == invite.strip():
            self.invite.clear()

    def _show_autostart(self, on: bool) -> None:
        self.autostart.blockSignals(True)
        self.autostart.setChecked(on)
        self.autostart.blockSignals(False)

    def _show_limits(self, node_limits: dict | None) -> None:
        self._limits_shown = True
        for k, v in limits_to_show(node_limits).items():
            self.limits[k].setValue(v)

    # -- actions ---------------------------------------------------------------------------------------

    def _autostart(self, on: bool) -> None:
        error = self.start_at_login.set(on)
        if error:
            self.banner.show_message(error)
            self._show_autostart(self.start_at_login.enabled())

    def apply(self) -> None:
        """Save the settings file, send the share limits to the node, and move the node to a new port."""
        s = self.app_settings
        s.mesh_invite = self.invite.text().strip()
        s.mesh_name = self.mesh_name.text().strip()
        new_port = self.port.value()
        port_changed = new_port != self._port_shown and not self.attached
        if port_changed:
            s.port = self._port_shown = new_port
        self.save_requested.emit()
        self.banner.show_message("Settings saved.", "ok")
        node_limits = (self.store.state.mesh or {}).get("limits") or {}
        chosen = {k: sb.value() for k, sb in self.limits.items()}
        if any(node_limits.get(k) != v for k, v in chosen.items()):
            self.node_actions.set_limits(chosen, on_done=self._limits_applied)
        if port_changed:
            self.restart_on_port_requested.emit(new_port)

    def _limits_applied(self, r: ApiResult) -> None:
        if r.ok:
            return
        if r.route_missing:
            self.banner.show_message(
                "Settings saved. The share limits will apply once the node supports the mesh "
                "(this version does not yet).",
                "info",
            )
        else:
            self.banner.show_message(f"Settings saved, but the node refused the share limits: {r.error}")

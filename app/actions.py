"""What the app asks its node to do, and the one place that knows the control API's paths.

The views, the mesh toggle and the controller call these methods with plain arguments (a model id, a
join body, share limits); each runs one call through the client the store follows and hands the
:class:`~app.client.ApiResult` to ``on_done`` on the Qt thread. Answers that carry the mesh object
(join, leave, limits) are folded into the store first, so every view sees them at once.

Contract (the node's): ``GET /api/models`` (the catalog with fit labels), ``POST /api/models/pull
{"model"}``, ``POST /api/models/{id}/cancel|load|unload``, ``DELETE /api/models/{id}``,
``POST /api/mesh/join {"invite"?, "name"?}``, ``POST /api/mesh/leave``, ``POST /api/mesh/limits``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import quote

from .client import ApiResult, NodeClient
from .store import NodeStore

ModelAction = Literal["download", "cancel", "delete", "load", "unload"]
OnDone = Callable[[ApiResult], None]

LOAD_TIMEOUT_S = 900.0  # loading a large model from a slow disk
JOIN_TIMEOUT_S = 90.0  # connecting to a far NATS server, and the hub's first answer, can take a while
NOT_RUNNING = "the node is not running"


def model_call(action: ModelAction, model: str) -> tuple[str, str, Any, float]:
    """(method, path, body, timeout) of one model action (pure)."""
    mid = quote(model, safe="")
    calls: dict[str, tuple[str, str, Any, float]] = {
        "download": ("POST", "/api/models/pull", {"model": model}, 30.0),
        "cancel": ("POST", f"/api/models/{mid}/cancel", {}, 30.0),
        "delete": ("DELETE", f"/api/models/{mid}", None, 60.0),
        "load": ("POST", f"/api/models/{mid}/load", {}, LOAD_TIMEOUT_S),
        "unload": ("POST", f"/api/models/{mid}/unload", {}, 60.0),
    }
    return calls[action]


class NodeActions:
    """The node's control calls, through the client that ``store`` follows (none before the node
    started, and none after quit: the calls then answer "the node is not running" or do nothing, as
    each method says)."""

    def __init__(self, store: NodeStore) -> None:
        self.store = store

    @property
    def client(self) -> NodeClient | None:
        return self.store.client

    def list_models(self, on_done: OnDone) -> None:
        """The catalog with fit labels and this machine's models; nothing is asked without a node."""
        if self.client is not None:
            self.client.request("GET", "/api/models", timeout=30, on_done=on_done)

    def model(self, action: ModelAction, model: str, on_done: OnDone | None = None) -> None:
        """download / cancel / delete / load / unload one model."""
        if self.client is None:
            if on_done:
                on_done(ApiResult(0, None, NOT_RUNNING))
            return
        method, path, body, timeout = model_call(action, model)
        self.client.request(method, path, body, timeout=timeout, on_done=on_done)

    def join_mesh(self, body: dict[str, str], on_done: OnDone) -> None:
        """Join with an invite or address (``{}``: rejoin the node's saved mesh)."""
        self._mesh("/api/mesh/join", body, JOIN_TIMEOUT_S, on_done)

    def leave_mesh(self, on_done: OnDone) -> None:
        """Leave the mesh (the node keeps its membership for a one-click rejoin)."""
        self._mesh("/api/mesh/leave", {}, 30.0, on_done)

    def set_limits(self, limits: dict[str, int], on_done: OnDone | None = None) -> None:
        """Share limits for requests from the mesh (the node keeps them)."""
        self._mesh("/api/mesh/limits", limits, 30.0, on_done)

    def _mesh(self, path: str, body: dict, timeout: float, on_done: OnDone | None) -> None:
        """One mesh call; the mesh object in its answer goes to the store before ``on_done`` runs.
        Without a node ``on_done`` gets "the node is not running" at once."""
        client = self.client
        if client is None:
            if on_done:
                on_done(ApiResult(0, None, NOT_RUNNING))
            return

        def done(r: ApiResult) -> None:
            if r.ok and isinstance(r.data, dict):
                self.store.apply_mesh(r.data)
            if on_done:
                on_done(r)

        client.request("POST", path, body, timeout=timeout, on_done=done)

"""One error type (runtime/errors.py): rendered once for HTTP, printed once by the CLI with its exit code,
and the one decision of where a request runs (runtime/mesh/router.py ``route``)."""

from __future__ import annotations

import json
import socket

import pytest

from runtime import cli
from runtime.api.app import error_response
from runtime.engine.events import Failed
from runtime.errors import EXIT_UNAVAILABLE, EXIT_USAGE, APIError, NodeError
from runtime.mesh.directory import Peer
from runtime.mesh.hub import HubDidNotStart, HubError
from runtime.mesh.membership import MeshError
from runtime.mesh.router import route
from runtime.models.download import DiskFullError, DownloadError
from runtime.models.manager import ModelError
from runtime.models.store import ModelSpecError
from runtime.server import PortInUse


def test_every_failure_the_user_sees_is_a_node_error():
    for e in (
        APIError(400, "bad"),
        ModelError("no such model", 404, "model_not_found"),
        ModelSpecError("not a GGUF"),
        MeshError("unreachable"),
        HubError("no hub"),
        DownloadError("cut off"),
        PortInUse("port taken"),
    ):
        assert isinstance(e, NodeError) and str(e) == e.message
    assert (ModelSpecError("x").exit_code, PortInUse("x").exit_code, HubDidNotStart("x").exit_code) == (
        EXIT_USAGE,
        EXIT_UNAVAILABLE,
        EXIT_UNAVAILABLE,
    )
    assert HubError("x").exit_code == 1 and DiskFullError("x").status == 507


def test_one_http_rendering():
    r = error_response(ModelError("the model 'x' is answering requests", 409, "model_busy"))
    assert r.status == 409 and "x-should-retry" not in r.headers  # a busy model may be free on a retry
    assert json.loads(r.text) == {
        "error": {
            "message": "the model 'x' is answering requests",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_busy",
        }
    }
    busy = error_response(APIError(503, "full", "server_error", None, "overloaded", retry_after=1))
    assert (busy.headers["Retry-After"], busy.headers["x-should-retry"]) == ("1", "true")
    crashed = error_response(Failed("the engine crashed", "engine_crashed").error())
    assert crashed.status == 500 and crashed.headers["x-should-retry"] == "false"
    refused = error_response(APIError(400, "bad"))
    assert refused.headers["x-should-retry"] == "false"  # the same request cannot succeed


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_cli_main_prints_the_error_once_with_its_exit_code(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLOSEDMESH_HOME", str(tmp_path))
    assert cli.main(["mesh", "invite", "--port", _closed_port()]) == 1  # no node there, no hub here
    err = capsys.readouterr().err
    assert err.count("closedmesh: ") == 1 and "no hub has been set up" in err

    assert cli.main(["models", "search", "no-such-model-anywhere-xyz"]) == 1
    err = capsys.readouterr().err
    assert err.count("closedmesh: no catalog model matches 'no-such-model-anywhere-xyz'") == 1

    assert cli.main(["mesh", "invite", "--ttl", "soon", "--port", _closed_port()]) == 1
    assert capsys.readouterr().err == "closedmesh: 'soon' is not a duration; write e.g. 30m, 24h or 7d\n"


def _peer(pid: str, free: int, max_tokens: int | None = None) -> Peer:
    a = {"name": pid, "models": [{"id": "m", "free_slots": free, "queued": 0}], "limits": {"max_tokens": max_tokens}}
    return Peer(pid, a, 0.0)


def test_route_local_first_then_peers_with_room():
    a, b = _peer("a", 1), _peer("b", 0)
    has_room = {"a": True, "b": False}

    def decide(here: dict | None, served: bool = True, known: bool = True) -> list | None:
        return route("m", [a, b], [], known, served, here, lambda p: has_room[p.id])

    assert decide(None) is None  # served here, not loaded yet: it loads here
    assert decide({"slots": 2, "slots_busy": 1, "queued": 0}) is None  # room here
    assert decide({"slots": 2, "slots_busy": 2, "queued": 0}) == [a]  # full here: a peer with room
    has_room["a"] = False
    assert decide({"slots": 2, "slots_busy": 2, "queued": 0}) is None  # nobody has room: wait here
    assert decide(None, served=False) == [a, b]  # only peers serve it
    assert route("m", [], [], False, False, None, lambda p: True) is None  # nobody: the 404 is local


def test_route_refuses_what_every_peer_caps():
    capped = [_peer("a", 1, max_tokens=256), _peer("b", 1, max_tokens=512)]
    with pytest.raises(APIError) as e:
        route("m", [], capped, False, False, None, lambda p: True)
    assert (e.value.status, e.value.code, e.value.param) == (400, "mesh_limit", "max_tokens")
    assert "at most 512 tokens" in e.value.message
    assert route("m", [], capped, True, True, None, lambda p: True) is None  # known here: runs here

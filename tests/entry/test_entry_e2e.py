"""The hosted entry node end to end (issue 14): a real hub, a real serving node with the default
model, and two real entry nodes (`closedmesh entry`) that joined with invites for the entry role.
Keys are made with the real `closedmesh keys` commands, and clients are the official openai SDK and
plain HTTP."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request

import nats
import openai
import pytest

from runtime.entry.buckets import KEYS_BUCKET
from runtime.mesh.identity import Identity
from runtime.mesh.protocol import inbox_prefix
from runtime.mesh.tls import client_context

from ..conftest import wait_for
from ..mesh.conftest import api, join, mesh_status, start_hub, start_mesh_node
from .conftest import EntryProcess, run_entry, start_entry

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, model_path):
    tmp = tmp_path_factory.mktemp("entry")
    hub = start_hub(tmp / "hub")
    started: list = []
    try:
        server = start_mesh_node(tmp, "server", model_path)
        started.append(server)
        join(server, hub.invite(), "server")
        a = start_entry(tmp / "entry-a", hub, "entry-a")
        started.append(a)
        b = start_entry(tmp / "entry-b", hub, "entry-b", "--trusted-proxy", "127.0.0.1")
        started.append(b)
        for e in (a, b):
            wait_for(lambda e=e: any(m["id"] == MODEL for m in _get(e, "/v1/models")[1]["data"]), 60,
                     what="the entry to see the model")
        yield hub, server, a, b
    finally:
        for p in started:
            p.stop()
        hub.stop()


def _get(e: EntryProcess, path: str, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(e.base_url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _post(e: EntryProcess, path: str, body: dict, key: str | None = None,
          headers: dict | None = None) -> tuple[int, dict, dict]:
    h = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(e.base_url + path, data=json.dumps(body).encode(), headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def _client(e: EntryProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=e.v1, api_key=key, timeout=120, max_retries=0)


def _usage(e: EntryProcess, name: str) -> dict:
    return e.admin(f"/admin/keys/{name}/usage")["usage"]


def test_models_open_chat_refused_without_a_key(mesh):
    _, _, a, _ = mesh
    # The open list needs no key and ignores whatever Authorization says.
    for key in ("nonsense", "cm_" + "x" * 43):
        ids = [m.id for m in _client(a, key).models.list().data]
        assert MODEL in ids
    code, body = _get(a, "/v1/models")
    assert code == 200 and MODEL in [m["id"] for m in body["data"]]
    msgs = [{"role": "user", "content": "hi"}]
    cases = {
        None: "missing_api_key",
        "Basic abc": "missing_api_key",
        "Bearer sk-not-ours": "invalid_api_key",
        "Bearer cm_" + "A" * 43: "invalid_api_key",
    }
    for auth, code_expected in cases.items():
        headers = {"Authorization": auth} if auth else {}
        code, body, hdrs = _post(a, "/v1/chat/completions", {"model": MODEL, "messages": msgs}, headers=headers)
        assert code == 401, body
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] == code_expected and body["error"]["message"]
    with pytest.raises(openai.AuthenticationError) as exc:
        _client(a, "cm_" + "B" * 43).chat.completions.create(model=MODEL, messages=msgs, max_tokens=4)
    assert "not valid" in str(exc.value)

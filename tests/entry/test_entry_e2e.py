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
from .conftest import EntryProcess, _port, run_entry, start_entry

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
        b = start_entry(tmp / "entry-b", hub, "entry-b", "--trusted-proxy", "127.0.0.1",
                        "--public-host", "api.example.org")
        started.append(b)
        for e in (a, b):
            wait_for(lambda e=e: any(m["id"] == MODEL for m in _get(e, "/v1/models")[1]["data"]), 120,
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


def test_key_from_one_entry_works_on_the_other_with_usage_recorded(mesh):
    _, _, a, b = mesh
    key = a.create_key("sdk-user")
    listing = a.keys("list", "--json").stdout
    assert key not in listing and key[8:] not in listing  # never the key, only its first characters
    msgs = [{"role": "user", "content": "Say hello."}]
    want_prompt = want_completion = 0
    # Made on A, used on B (and on A): the key lives in the mesh, not in one process.
    wait_for(lambda: _post(b, "/v1/chat/completions", {"model": MODEL, "messages": msgs, "max_tokens": 1},
                           key=key)[0] == 200, 10, what="the key to reach B")
    want_requests = 1
    r0 = _post(a, "/v1/chat/completions", {"model": MODEL, "messages": msgs, "max_tokens": 1}, key=key)[1]
    want_prompt += 2 * r0["usage"]["prompt_tokens"]
    want_completion += 2 * r0["usage"]["completion_tokens"]
    want_requests += 1
    for e in (b, a):
        r = _client(e, key).chat.completions.create(model=MODEL, messages=msgs, max_tokens=12)
        assert r.choices[0].message.content and r.usage.completion_tokens > 0
        want_prompt += r.usage.prompt_tokens
        want_completion += r.usage.completion_tokens
        want_requests += 1
    # Streaming with include_usage: the final chunk carries the usage.
    stream = _client(b, key).chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, stream=True,
                                                     stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    want_prompt += chunks[-1].usage.prompt_tokens
    want_completion += chunks[-1].usage.completion_tokens
    want_requests += 1
    # Streaming without include_usage: the client gets none, the entry still records it. The tokens are
    # counted by their log probabilities (one entry per token, whichever chunk releases its text; a token
    # can be part of a character that a later chunk completes, so chunks are not tokens).
    stream = _client(a, key).chat.completions.create(model=MODEL, messages=msgs, max_tokens=7, stream=True,
                                                     logprobs=True)
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    want_completion += sum(len(c.choices[0].logprobs.content or []) for c in chunks
                           if c.choices and c.choices[0].logprobs is not None)
    want_prompt += r0["usage"]["prompt_tokens"]
    want_requests += 1

    def recorded() -> dict | None:
        u = _usage(a, "sdk-user")
        return u if u["requests"] == want_requests else None

    u = wait_for(recorded, 10, what="the usage of every answer to be recorded")
    assert u["prompt_tokens"] == want_prompt
    assert u["completion_tokens"] == want_completion
    assert _usage(b, "sdk-user") == u  # one record for the mesh, whichever entry node answered
    row = next(r for r in json.loads(a.keys("list", "--json").stdout) if r["name"] == "sdk-user")
    assert row["usage_today"]["requests"] == want_requests and row["last_used"]


def test_revocation_on_one_entry_is_refused_by_both_within_a_second(mesh):
    _, _, a, b = mesh
    key = a.create_key("to-revoke")
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}  # no inference needed
    for e in (a, b):
        wait_for(lambda e=e: _post(e, "/v1/chat/completions", body, key=key)[0] == 404, 10, what="the key to work")
    refused_at: dict[str, float] = {}
    stop = threading.Event()

    def watch(e: EntryProcess, label: str) -> None:
        while not stop.is_set():
            code, err, _ = _post(e, "/v1/chat/completions", body, key=key)
            if code == 401:
                assert err["error"]["code"] == "revoked_api_key", err
                refused_at[label] = time.monotonic()
                return

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(watch, a, "a"), pool.submit(watch, b, "b")]
        time.sleep(0.3)
        t0 = time.monotonic()
        out = a.keys("revoke", "to-revoke")
        assert "revoked" in out.stdout
        t_done = time.monotonic()
        try:
            wait_for(lambda: len(refused_at) == 2, 15, what="both entry nodes to refuse the revoked key")
        finally:
            stop.set()
            for f in futures:
                f.result()
    # Measured from the moment the revoke command returned (its own start-up is not the mesh's delay).
    slowest = max(refused_at.values()) - t_done
    assert slowest < 1.0, f"revocation took {slowest:.3f}s to reach both entry nodes (command took {t_done - t0:.2f}s)"
    for e in (a, b):
        assert _post(e, "/v1/chat/completions", body, key=key)[0] == 401


def test_rate_limit_holds_across_both_entries(mesh):
    _, _, a, b = mesh
    rpm = 5
    key = b.create_key("limited", "--rpm", str(rpm))
    wait_for(lambda: any(r["name"] == "limited" for r in a.admin("/admin/keys")["keys"]), 10, what="key on A")
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}  # cheap: 404 after the gate
    # All at once, half through each entry node: the compare-and-set on the shared window decides.
    with concurrent.futures.ThreadPoolExecutor(3 * rpm) as pool:
        results = list(pool.map(lambda i: _post((a, b)[i % 2], "/v1/chat/completions", body, key=key),
                                range(3 * rpm)))
    accepted = [r for r in results if r[0] != 429]
    limited = [r for r in results if r[0] == 429]
    assert rpm <= len(accepted) <= rpm + 1, [r[0] for r in results]
    assert all(r[0] == 404 for r in accepted)
    code, err, headers = limited[0]
    assert err["error"]["code"] == "rate_limit_exceeded" and "5 requests per minute" in err["error"]["message"]
    h = {k.lower(): v for k, v in headers.items()}
    assert int(h["retry-after"]) >= 1
    assert h["x-ratelimit-limit-requests"] == "5" and h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"].endswith("s")
    remaining = sorted(int({k.lower(): v for k, v in r[2].items()}["x-ratelimit-remaining-requests"])
                       for r in accepted)
    assert remaining == list(range(rpm - len(accepted), rpm))  # each accepted request saw its own count
    # The SDK sees a RateLimitError.
    with pytest.raises(openai.RateLimitError):
        _client(a, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1)


def test_concurrency_limit_across_entries(mesh):
    _, _, a, b = mesh
    key = a.create_key("one-at-a-time", "--concurrent", "1")
    msgs = [{"role": "user", "content": "Write a long story about a cat."}]
    wait_for(lambda: _post(b, "/v1/chat/completions", {"model": MODEL, "messages": msgs, "max_tokens": 1},
                           key=key)[0] == 200, 10, what="the key to reach B")
    stream = _client(a, key).chat.completions.create(model=MODEL, messages=msgs, max_tokens=200, stream=True)
    it = iter(stream)
    next(it)  # running on A now
    code, err, headers = _post(b, "/v1/chat/completions", {"model": MODEL, "messages": msgs, "max_tokens": 1},
                               key=key)
    assert code == 429 and err["error"]["code"] == "concurrency_limit_exceeded", err
    assert {k.lower() for k in headers} >= {"retry-after"}
    for _ in it:
        pass
    wait_for(lambda: _post(b, "/v1/chat/completions", {"model": MODEL, "messages": msgs, "max_tokens": 1},
                           key=key)[0] == 200, 10, what="the lease to be released")


def test_tokens_per_day(mesh):
    _, _, a, b = mesh
    key = a.create_key("small-budget", "--tokens-per-day", "30")
    msgs = [{"role": "user", "content": "Hello there, how are you today?"}]
    wait_for(lambda: any(r["name"] == "small-budget" for r in b.admin("/admin/keys")["keys"]), 10, what="key on B")
    code, r, headers = _post(b, "/v1/chat/completions", {"model": MODEL, "messages": msgs, "max_tokens": 16}, key=key)
    assert code == 200 and r["usage"]["total_tokens"] > 30
    h = {k.lower(): v for k, v in headers.items()}
    assert h["x-ratelimit-limit-tokens"] == "30" and h["x-ratelimit-remaining-tokens"] == "30"
    wait_for(lambda: _usage(a, "small-budget")["requests"] == 1, 10, what="usage recorded")
    code, err, headers = _post(a, "/v1/chat/completions", {"model": MODEL, "messages": msgs, "max_tokens": 4}, key=key)
    assert code == 429 and "tokens for today" in err["error"]["message"], err
    h = {k.lower(): v for k, v in headers.items()}
    assert h["x-ratelimit-remaining-tokens"] == "0" and int(h["retry-after"]) >= 1


def test_expired_key(mesh):
    _, _, a, b = mesh
    key = a.create_key("short-lived", "--expires", "2s")
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}
    code, err, _ = wait_for(lambda: (r := _post(b, "/v1/chat/completions", body, key=key))[0] == 401 and r, 15,
                            what="the key to expire")
    assert err["error"]["code"] == "expired_api_key" and "expired" in err["error"]["message"]


def test_public_port_is_only_the_public_api(mesh):
    _, _, a, _ = mesh
    token = (a.home / "config" / "admin-token").read_text().strip()
    # Control endpoints and the key admin API are not on the public port, admin token or not.
    for path in ("/api/models", "/admin/keys", "/api/mesh"):
        code, body = _get(a, path, {"Authorization": f"Bearer {token}"})
        assert code == 404, (path, body)
    code, body, _ = _post(a, "/api/mesh/leave", {}, headers={"Authorization": f"Bearer {token}"})
    assert code == 404
    # Every other /v1 route needs a key, existing or not (a route added later is closed by default).
    for path in ("/v1/responses", "/v1/no-such-route", "/v1/audio/speech"):
        code, body, _ = _post(a, path, {})
        assert code == 401 and body["error"]["code"] == "missing_api_key", (path, body)
    # CORS for any origin on /v1 (bearer keys, no cookies).
    req = urllib.request.Request(a.v1 + "/chat/completions", method="OPTIONS", headers={
        "Origin": "https://some-app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "https://some-app.example"
    code, body, headers = _post(a, "/v1/chat/completions", {}, headers={"Origin": "https://some-app.example"})
    assert code == 401 and headers.get("Access-Control-Allow-Origin") == "https://some-app.example"


def test_public_host_feeds_the_host_allowlist(mesh):
    _, _, a, b = mesh
    host = {"Host": "api.example.org"}
    assert _get(b, "/v1/models", host)[0] == 200  # B was started with --public-host api.example.org
    code, body = _get(a, "/v1/models", host)  # A was not: a foreign name is refused (DNS rebinding)
    assert code == 403 and body["error"]["code"] == "forbidden_host"
    assert _get(b, "/v1/models", {"Host": "evil.example"})[0] == 403


def test_plain_member_cannot_read_create_or_unrevoke_keys(mesh, tmp_path):
    hub, server, a, _ = mesh
    key = a.create_key("target")
    rec = next(r for r in a.admin("/admin/keys")["keys"] if r["name"] == "target")
    a.keys("revoke", "target")
    ident = Identity((server.home / "config" / "mesh-node.seed").read_text().strip())
    cert = json.loads((server.home / "config" / "mesh.json").read_text())["tls"]
    forged = dict(rec, revoked_at=None)
    for k in ("usage_today", "last_used", "day"):
        forged.pop(k)
    fake_id = "f" * 64

    async def attack() -> dict:
        errors: list[str] = []

        async def on_error(e: Exception) -> None:
            errors.append(str(e))

        nc = await nats.connect(hub.url, nkeys_seed_str=ident.seed, inbox_prefix=inbox_prefix(ident.public),
                                tls=client_context(cert), error_cb=on_error, allow_reconnect=False)
        out: dict = {"errors": errors}
        try:
            js = nc.jetstream(timeout=2)
            try:
                await js.key_value(KEYS_BUCKET)
                out["opened"] = True
            except Exception as e:
                out["open_error"] = type(e).__name__
            got: list = []

            async def cb(msg) -> None:
                got.append(msg)

            await nc.subscribe(f"$KV.{KEYS_BUCKET}.>", cb=cb)
            await nc.subscribe(f"$KV.cm-usage.>", cb=cb)
            # Un-revoke, and plant a key of its own, by publishing on the bucket's subjects directly.
            await nc.publish(f"$KV.{KEYS_BUCKET}.{rec['id']}", json.dumps(forged).encode())
            await nc.publish(f"$KV.{KEYS_BUCKET}.{fake_id}", json.dumps(dict(forged, id=fake_id)).encode())
            for subject in (f"$JS.API.DIRECT.GET.KV_{KEYS_BUCKET}.$KV.{KEYS_BUCKET}.{rec['id']}",
                            f"$JS.API.STREAM.MSG.GET.KV_{KEYS_BUCKET}", f"$JS.API.CONSUMER.CREATE.KV_{KEYS_BUCKET}"):
                try:
                    await nc.request(subject, b"{}", timeout=1)
                    out.setdefault("answered", []).append(subject)
                except Exception:
                    pass
            await nc.flush()
            await asyncio.sleep(1.0)
            out["received"] = len(got)
        finally:
            await nc.close()
        return out

    out = asyncio.run(attack())
    assert not out.get("opened") and not out.get("answered"), out
    assert out["received"] == 0
    assert any("permissions violation" in e.lower() for e in out["errors"]), out["errors"]
    # The entry's view is unchanged: still revoked, no planted key.
    recs = {r["id"]: r for r in a.admin("/admin/keys")["keys"]}
    assert recs[rec["id"]]["revoked_at"] is not None and fake_id not in recs
    code, err, _ = _post(a, "/v1/chat/completions", {"model": MODEL, "messages": []}, key=key)
    assert code == 401 and err["error"]["code"] == "revoked_api_key"


def test_flood_of_unauthenticated_requests_costs_no_inference_and_no_mesh_traffic(mesh):
    _, server, a, b = mesh
    before = a.admin("/admin/stats")
    served_before = mesh_status(server)["served_total"]
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}).encode()
    auths = [None, "Bearer nonsense", "Bearer cm_" + "Z" * 43, "Basic x"]
    n = 400

    def one(i: int) -> int:
        h = {"Content-Type": "application/json"}
        if auths[i % 4]:
            h["Authorization"] = auths[i % 4]
        req = urllib.request.Request(a.v1 + "/chat/completions", data=body, headers=h, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(n)))
    elapsed = time.monotonic() - t0
    after = a.admin("/admin/stats")
    assert set(codes) <= {401, 429}, set(codes)
    assert codes.count(401) >= 1
    assert after["refused"] + after["throttled"] - before["refused"] - before["throttled"] == n
    assert after["store_operations"] == before["store_operations"]  # not one key-value operation
    sent = after["mesh_messages"]["out_msgs"] - before["mesh_messages"]["out_msgs"]
    # Only the node's own background traffic (announcements every 5 s, the key-bucket probe every 2 s, pings)
    # went out meanwhile.
    assert sent <= 4 + 2 * elapsed, f"{sent} messages sent to the mesh in {elapsed:.1f}s of flood"
    assert mesh_status(server)["served_total"] == served_before


def test_forwarded_for_only_from_trusted_proxies(mesh):
    _, _, a, b = mesh
    # B trusts 127.0.0.1 as its proxy: each X-Forwarded-For client has its own bad-key budget. A trusts
    # no proxy: the header changes nothing (the connection's address is the client).
    def burst(e: EntryProcess, client: str, n: int) -> list[int]:
        return [_post(e, "/v1/completions", {}, key="bad", headers={"X-Forwarded-For": client})[0]
                for _ in range(n)]

    assert 429 in burst(b, "203.0.113.7", 70)
    assert burst(b, "203.0.113.8", 3) == [401, 401, 401]
    assert 429 in burst(a, "203.0.113.9", 70)
    assert 429 in burst(a, "203.0.113.10", 3)


def test_entry_serves_no_model_even_with_models_on_disk(mesh, tmp_path, model_path):
    from ..conftest import seed_home

    hub, _, _, _ = mesh
    home = tmp_path / "entry-with-models"
    seed_home(home, model_path)  # the default model sits in this home's models folder
    e = start_entry(home, hub, "entry-d")
    try:
        wait_for(lambda: any(m["id"] == MODEL for m in _get(e, "/v1/models")[1]["data"]), 60, what="mesh model")
        ours = next(m for m in _get(e, "/v1/models")[1]["data"] if m["id"] == MODEL)
        assert ours["closedmesh"]["served_by"] == "mesh", ours
        assert [m["id"] for m in _get(e, "/v1/models")[1]["data"]] == [MODEL]
    finally:
        e.stop()


def test_entry_refuses_an_open_mesh(tmp_path, mesh):
    hub = mesh[0]
    proc = run_entry(tmp_path / "open", "--mesh", hub.url)
    assert proc.wait(60) == 2
    assert "never on an open nats:// mesh" in (tmp_path / "open" / "entry.log").read_text()


def test_member_without_the_entry_role_cannot_run_an_entry(tmp_path, mesh):
    """A plain member is refused the buckets; `closedmesh mesh role NODE entry` on the hub gives an existing
    member the role (the same machine then runs an entry without a new invite), and `... member` takes it
    back."""
    hub = mesh[0]
    home = tmp_path / "plain"
    proc = run_entry(home, "--mesh", hub.invite(), "--name", "plain-member")
    assert proc.wait(60) == 4
    assert "entry role" in (home / "entry.log").read_text()

    out = hub.cli("mesh", "role", "plain-member", "entry").stdout
    assert "now has the entry role" in out, out
    assert "already has" in hub.cli("mesh", "role", "plain-member", "entry").stdout
    e = EntryProcess(run_entry(home), home, 0, home / "entry.log")  # the saved membership, no invite
    try:
        e.port = wait_for(lambda: _port(e), 120, what="the promoted member's entry node to bind its port")
        wait_for(lambda: (home / "config" / "entry-admin.json").exists(), 60, what="its admin API")
        key = e.create_key("promoted")
        code, err, _ = _post(e, "/v1/chat/completions", {"model": "no-such-model", "messages": [
            {"role": "user", "content": "x"}]}, key=key)
        assert code == 404, err  # past the key check: the key bucket works for it
    finally:
        e.stop()

    assert "plain member again" in hub.cli("mesh", "role", "plain-member", "member").stdout
    again = run_entry(home)
    assert again.wait(60) == 4
    assert "entry role" in (home / "entry.log").read_text()
    bad = hub.cli("mesh", "role", "nobody-by-that-name", "entry", check=False)
    assert bad.returncode != 0 and "no member of this hub" in bad.stderr


def test_an_entry_whose_role_is_taken_back_refuses_every_key_until_it_is_given_back(mesh, tmp_path):
    """`closedmesh mesh role NODE member` on a *running* entry node: the hub's reload takes the key buckets
    from its live connection, but a watch already running goes on delivering and the node held a local copy
    of the keys. It must not go on accepting keys from records it can no longer be sure are current: it
    finds out by itself (idle, no request needed), refuses every key with a plain 503, says why in
    `closedmesh keys`, and once the role is given back, accepts keys again from a fresh copy (a key revoked
    meanwhile stays refused)."""
    hub, _, a, _ = mesh
    d = start_entry(tmp_path / "entry-d", hub, "entry-demoted")
    try:
        key = a.create_key("kept-through-demotion")
        gone = a.create_key("revoked-while-demoted")
        body = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}  # 404 once past the gate
        # Known to d, but no request is sent to it yet: its usage writes would reveal the demotion at once,
        # and this test is about an entry node that is idle when its role is taken back.
        wait_for(lambda: {"kept-through-demotion", "revoked-while-demoted"}
                 <= {k["name"] for k in d.admin("/admin/keys")["keys"]}, 10, what="the entry to know both keys")

        assert "plain member again" in hub.cli("mesh", "role", "entry-demoted", "member").stdout
        demoted = time.monotonic()
        wait_for(lambda: _post(d, "/v1/chat/completions", body, key=key)[0] == 503, 20, interval=0.2,
                 what="the demoted entry to refuse keys")
        took = time.monotonic() - demoted
        code, err, headers = _post(d, "/v1/chat/completions", body, key=key)
        assert code == 503 and err["error"]["code"] == "entry_role_lost", err
        assert "no longer gives it the entry role" in err["error"]["message"] and headers["Retry-After"] == "30"
        for args in (("list",), ("create", "--name", "while-demoted"), ("revoke", "kept-through-demotion")):
            r = d.keys(*args, check=False)
            assert r.returncode != 0 and "no longer has the entry role" in r.stderr, (args, r.stderr)
        assert d.admin("/admin/stats")["key_store_refused"].startswith("this entry node no longer has the entry role")

        assert "revoked" in a.keys("revoke", "revoked-while-demoted").stdout
        assert "now has the entry role" in hub.cli("mesh", "role", "entry-demoted", "entry").stdout
        wait_for(lambda: _post(d, "/v1/chat/completions", body, key=key)[0] == 404, 60, interval=0.5,
                 what="keys accepted again once the role is given back")
        code, err, _ = _post(d, "/v1/chat/completions", body, key=gone)
        assert code == 401 and err["error"]["code"] == "revoked_api_key", err
        assert d.admin("/admin/stats")["key_store_refused"] is None
        assert "Traceback" not in d.log() and "Error handling request" not in d.log()
        print(f"the demoted entry refused keys {took:.1f}s after `mesh role ... member`")
    finally:
        d.stop()


def test_leases_of_an_entry_that_dies_expire(mesh, tmp_path):
    from runtime.entry.keys import LEASE_SECONDS

    hub, _, a, _ = mesh
    c = start_entry(tmp_path / "entry-c", hub, "entry-c")
    try:
        key = c.create_key("lease-holder", "--concurrent", "1")
        msgs = [{"role": "user", "content": "Write a long story about a dog."}]
        wait_for(lambda: any(m["id"] == MODEL for m in _get(c, "/v1/models")[1]["data"]), 60, what="C sees the model")
        stream = iter(_client(c, key).chat.completions.create(model=MODEL, messages=msgs, max_tokens=500, stream=True))
        next(stream)
        c.proc.kill()  # dies holding the lease: nobody releases it
        c.proc.wait()
        killed = time.monotonic()
        body = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}
        code, err, _ = _post(a, "/v1/chat/completions", body, key=key)
        assert code == 429 and err["error"]["code"] == "concurrency_limit_exceeded", err
        wait_for(lambda: _post(a, "/v1/chat/completions", body, key=key)[0] == 404, LEASE_SECONDS + 30,
                 interval=0.5, what="the dead entry's lease to expire")
        assert time.monotonic() - killed <= LEASE_SECONDS + 30
    finally:
        c.stop()


def test_entry_follows_a_hub_restart(tmp_path):
    """Keys made before a hub restart still work after it; keys made and revoked after it too (the watch
    on the key records is set up afresh on the new connection)."""
    hub = start_hub(tmp_path / "hub")
    e = None
    try:
        e = start_entry(tmp_path / "entry", hub, "entry")
        before = e.create_key("before-restart")
        body = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}
        assert wait_for(lambda: _post(e, "/v1/chat/completions", body, key=before)[0] == 404, 10, what="key works")
        hub.stop()
        hub = start_hub(tmp_path / "hub", hub.port)
        after = wait_for(lambda: _try_create(e, "after-restart"), 30, what="a key to be made after the restart")
        for key in (before, after):
            wait_for(lambda key=key: _post(e, "/v1/chat/completions", body, key=key)[0] == 404, 30,
                     what="keys to work after the hub restart")
        e.keys("revoke", "after-restart")
        wait_for(lambda: _post(e, "/v1/chat/completions", body, key=after)[0] == 401, 10,
                 what="a revocation after the restart to take effect")
    finally:
        if e is not None:
            e.stop()
        hub.stop()


def _try_create(e: EntryProcess, name: str) -> str | None:
    r = e.keys("create", "--name", name, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def test_usage_of_an_answer_continued_on_another_peer(tmp_path, model_path):
    """The serving peer is killed mid-stream; the answer ends on the other one and the key's usage holds
    both legs (the client did not ask for usage: the entry records it anyway)."""
    import os
    import signal

    hub = start_hub(tmp_path / "hub")
    nodes: dict = {}
    e = None
    try:
        for name in ("b", "c"):
            nodes[name] = start_mesh_node(tmp_path, name, model_path, "shared")
            join(nodes[name], hub.invite(), name)
        e = start_entry(tmp_path / "entry", hub, "entry")
        wait_for(lambda: any(m["id"] == "shared" and m["closedmesh"]["peers"] == 2
                             for m in _get(e, "/v1/models")[1]["data"]), 60, what="both peers listed")
        key = e.create_key("failover")
        max_tokens = 120
        stream = _client(e, key).chat.completions.create(
            model="shared", messages=[{"role": "user", "content": "Tell me a long story about a ship."}],
            max_tokens=max_tokens, stream=True, temperature=0.7, seed=7,
            logit_bias={"0": -100, "2": -100, "4": -100})
        killed = None
        tokens = 0
        finish = None
        for c in stream:
            if c.choices and c.choices[0].delta.content is not None and c.choices[0].delta.role is None:
                tokens += 1
            if c.choices and c.choices[0].finish_reason:
                finish = c.choices[0].finish_reason
            if killed is None and tokens >= 20:
                killed = next((k for k, n in nodes.items() if mesh_status(n)["serving_mesh_requests"] > 0), None)
                assert killed is not None
                os.kill(nodes[killed].proc.pid, signal.SIGKILL)
        assert killed is not None and finish == "length" and tokens == max_tokens
        survivor = "c" if killed == "b" else "b"
        assert mesh_status(nodes[survivor])["served_total"] == 1
        u = wait_for(lambda: (u := _usage(e, "failover"))["requests"] == 1 and u, 10, what="usage recorded")
        assert u["completion_tokens"] == max_tokens and u["prompt_tokens"] > 10
    finally:
        if e is not None:
            e.stop()
        for n in nodes.values():
            n.stop()
        hub.stop()


def test_openai_npm_package_against_the_entry(mesh):
    import shutil
    from pathlib import Path

    node_dir = Path(__file__).resolve().parent.parent / "node"
    node_bin = shutil.which("node")
    assert node_bin, "Node.js is required for this test (scripts/test.sh checks for it)"
    assert (node_dir / "node_modules" / "openai").is_dir(), "run `npm ci` in tests/node (scripts/test.sh does)"
    _, _, a, b = mesh
    key = a.create_key("npm", "--rpm", "5")
    wait_for(lambda: any(r["name"] == "npm" for r in b.admin("/admin/keys")["keys"]), 10, what="key on B")
    p = subprocess.run([node_bin, "entry_client.mjs", b.v1, MODEL, key], cwd=node_dir, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert MODEL in out["ids"]
    assert out["refused"]["status"] == 401 and out["refused"]["name"] == "AuthenticationError"
    assert out["refused"]["code"] == "invalid_api_key"
    assert out["chat"]["content"] and out["chat"]["usage"]["total_tokens"] > 0
    assert out["chat"]["remaining"] == "4"  # 5 a minute: this was the first accepted (refused ones do not count)
    assert out["stream"]["text"] == out["chat"]["content"] and out["stream"]["lastChoices"] == 0
    assert out["stream"]["usage"]["completion_tokens"] > 0
    assert out["limited"] == {"status": 429, "code": "rate_limit_exceeded", "name": "RateLimitError"}
    u = wait_for(lambda: (u := _usage(a, "npm"))["requests"] == 5 and u, 10, what="usage of the 5 accepted")
    assert u["completion_tokens"] == out["chat"]["usage"]["completion_tokens"] + out["stream"]["usage"][
        "completion_tokens"]


def test_admin_api_needs_the_token_and_refuses_browsers(mesh):
    _, _, a, _ = mesh
    token = (a.home / "config" / "admin-token").read_text().strip()
    assert a.admin_url.startswith("http://127.0.0.1:")

    def call(headers: dict) -> tuple[int, dict]:
        req = urllib.request.Request(a.admin_url + "/admin/keys", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    assert call({})[0] == 401
    assert call({"Authorization": "Bearer wrong"})[0] == 401
    assert call({"Authorization": f"Bearer {token}", "Origin": "http://127.0.0.1"})[0] == 403
    assert call({"Authorization": f"Bearer {token}", "Host": "evil.example"})[0] == 403
    code, body = call({"Authorization": f"Bearer {token}"})
    assert code == 200 and isinstance(body["keys"], list)


def test_keys_command_without_an_entry_says_so(tmp_path):
    import os

    from ..conftest import CLOSEDMESH

    env = dict(os.environ, CLOSEDMESH_HOME=str(tmp_path / "nothing-here"))
    r = subprocess.run([str(CLOSEDMESH), "keys", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "no entry node has run here" in r.stderr
    r = subprocess.run([str(CLOSEDMESH), "keys", "create", "--name", "x", "--admin-url", "http://127.0.0.1:9"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "does not answer" in r.stderr and "closedmesh entry" in r.stderr


def test_usage_of_answers_cut_by_an_entry_shutdown_is_recorded(mesh, tmp_path):
    """An entry node stopped (SIGTERM) while it streams an answer: the stream ends, and the tokens sent
    until then are still recorded (the key store's connection outlives the mesh membership's)."""
    hub, _, a, _ = mesh
    c = start_entry(tmp_path / "entry-e", hub, "entry-e")
    try:
        key = c.create_key("cut-by-shutdown")
        wait_for(lambda: any(m["id"] == MODEL for m in _get(c, "/v1/models")[1]["data"]), 60, what="C sees the model")
        stream = _client(c, key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Write a long story about a ship."}], max_tokens=400,
            stream=True, logit_bias={"0": -100, "2": -100, "4": -100})
        seen = 0
        with pytest.raises((openai.APIError, openai.APIConnectionError, ValueError)):  # the cut stream
            for ch in stream:
                if ch.choices and ch.choices[0].delta.content is not None and ch.choices[0].delta.role is None:
                    seen += 1
                if seen == 10:
                    c.proc.terminate()
        assert c.proc.wait(60) == 0, c.log()[-3000:]
        u = wait_for(lambda: (u := _usage(a, "cut-by-shutdown"))["requests"] == 1 and u, 10, what="usage")
        assert u["completion_tokens"] >= seen and u["prompt_tokens"] > 0, (u, seen)
    finally:
        c.stop()


# -- the chat page as the zero-set-up web chat of a real entry ---------------------------------------


def test_chat_page_on_a_real_entry_lists_models_openly_and_asks_for_a_key_once(mesh):
    """The chat page served by a real entry node, in headless Chromium: the open model list without a
    key, a refused first message that asks for a key, the same message answered by the mesh's real
    model once a key made with `closedmesh keys create` is given, the key kept (and sent only to the
    page's own origin), and usage recorded for it."""
    from ..e2e.test_chat_page import CHROMIUM, CHROMIUM_ARGS, T, open_chat, send, stored_key, wait_idle

    _, _, a, _ = mesh
    key = a.create_key("web-chat")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/test.sh does)")
    from playwright.sync_api import sync_playwright

    requests: list[tuple[str, str | None]] = []
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_context(viewport={"width": 1100, "height": 760}).new_page()
            pg.set_default_timeout(30_000)
            pg.on("pageerror", lambda e: problems.append(f"uncaught error in the page: {e}"))
            pg.on("request", lambda r: requests.append((r.url, r.headers.get("authorization"))))
            open_chat(pg, a, MODEL)  # the open list, before any key
            assert pg.is_hidden("#key-panel") and stored_key(pg) is None

            send(pg, "What is the capital of France?")
            pg.wait_for_selector("#key-panel:not([hidden])")
            wait_idle(pg)
            pg.fill("#api-key", key)
            pg.press("#api-key", "Enter")
            try:
                pg.wait_for_function("() => (document.querySelector('.message.assistant:not(.failed) "
                                     ".message-body')?.textContent || '').trim().length > 0", timeout=T)
            except Exception:
                raise AssertionError(pg.text_content("#status") + " | " + pg.inner_text("body")[-2000:]
                                     + " | " + str(requests) + a.log()[-3000:]) from None
            wait_idle(pg)
            assert pg.is_hidden("#key-panel") and stored_key(pg) == key
            assert pg.text_content("#status") == "Answer complete."
        finally:
            browser.close()
    assert not problems, problems
    assert all(url.startswith(a.base_url) for url, _ in requests), requests  # only its own origin
    sent = [auth for url, auth in requests if url.endswith("/v1/chat/completions")]
    assert sent[0] is None and sent[-1] == f"Bearer {key}"  # no key until one was given
    assert not any(auth for url, auth in requests if url.endswith("/v1/models"))  # the list is open

    def recorded() -> bool:
        listed = a.keys("list", "--json").stdout
        return any(k["name"] == "web-chat" and k["usage_today"]["requests"] >= 1 for k in json.loads(listed))

    wait_for(recorded, 30, interval=0.5, what="the web chat's answer in the key's usage")

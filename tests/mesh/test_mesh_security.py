"""A hostile member of the same hub can neither read nor answer requests meant for others, nor announce
in another node's name; and the NATS servers see routing metadata only (requests and answers are
end-to-end encrypted to the serving node)."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess

import nats
import openai
import pytest

from runtime.mesh.hub import nats_server_binary
from runtime.mesh.identity import Identity
from runtime.mesh.tls import certificate_token, client_context, ensure_certificate
from runtime.mesh.protocol import (announce_subject, ctl_subject, inbox_prefix, kv_subject, req_subject, seal,
                                   sign_announcement)

from ..conftest import wait_for
from .conftest import api, free_port, join, mesh_status, peer_names, start_hub, start_mesh_node

pytestmark = pytest.mark.e2e


def _other_certificate(tmp_path) -> str:
    """A certificate that is not the hub's (what an impostor or a man in the middle would present)."""
    cert, _ = ensure_certificate(tmp_path / "other-tls", ["127.0.0.1"])
    return certificate_token(cert)


def _seed(node) -> Identity:
    return Identity((node.home / "config" / "mesh-node.seed").read_text().strip())


def _chat(node, model: str, content: str, max_tokens: int = 24) -> str:
    r = openai.OpenAI(base_url=node.v1, api_key="x", max_retries=0, timeout=120).chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0)
    return r.choices[0].message.content


def test_hostile_member_cannot_read_answer_or_impersonate(tmp_path, model_path):
    hub = start_hub(tmp_path / "hub")
    nodes = {}
    try:
        for name, model in (("a", "alpha"), ("b", "beta"), ("h", "hostile")):
            nodes[name] = start_mesh_node(tmp_path, name, model_path, model)
            join(nodes[name], hub.invite(), name)
        a, b, h = nodes["a"], nodes["b"], nodes["h"]
        wait_for(lambda: peer_names(a) == {"b", "h"}, 10, what="directory")
        ident_h, ident_b = _seed(h), _seed(b)
        ident_a = _seed(a)

        async def attack() -> dict:
            errors: list[str] = []
            got: list[bytes] = []

            async def on_error(e: Exception) -> None:
                errors.append(str(e).lower())

            # The hub speaks TLS only, with the certificate its invites carry (pinned by members).
            cert = json.loads((h.home / "config" / "mesh.json").read_text())["tls"]
            assert cert
            for tls in (None, client_context(_other_certificate(tmp_path))):
                with pytest.raises(Exception) as refused:
                    await nats.connect(hub.url, nkeys_seed_str=ident_h.seed, tls=tls, allow_reconnect=False,
                                       max_reconnect_attempts=1, connect_timeout=3, error_cb=on_error)
                assert "certificate verify failed" in str(refused.value).lower() or isinstance(
                    refused.value, ssl.SSLError), refused.value
            errors.clear()
            nc = await nats.connect(hub.url, nkeys_seed_str=ident_h.seed, inbox_prefix=inbox_prefix(ident_h.public),
                                    error_cb=on_error, allow_reconnect=False, tls=client_context(cert))

            async def record(msg) -> None:
                got.append(msg.data)

            # Eavesdrop on B's requests, A's inboxes, and everything.
            for subject in (req_subject(ident_b.public), ctl_subject(ident_b.public),
                            f"{inbox_prefix(ident_a.public)}.>", ">", "cm.>"):
                await nc.subscribe(subject, cb=record)
                await nc.flush()
            # Announce in B's name: directly into B's entry, on B's announcement subject, and B's identity
            # inside H's own announcement (which the hub checks before writing it).
            forged = sign_announcement(ident_h, {"name": "b", "models": [{"id": "evil", "free_slots": 9}], "ttl": 15})
            await nc.publish(kv_subject(ident_b.public), forged)
            await nc.publish(announce_subject(ident_b.public), forged)
            fake_b = json.loads(forged)
            fake_b["a"]["id"] = ident_b.public
            await nc.publish(announce_subject(ident_h.public), json.dumps(fake_b).encode())
            # Inject an "answer" into A's inbox.
            await nc.publish(f"{inbox_prefix(ident_a.public)}.x", seal(os.urandom(32), {"t": "d", "x": "PWNED"}))
            # A request to B that is not encrypted to B: B must ignore it.
            await nc.publish(req_subject(ident_b.public), b"not encrypted", reply=nc.new_inbox())
            await nc.flush()
            answer = await asyncio.to_thread(_chat, a, "beta", "Name a fruit.")
            await asyncio.sleep(0.5)
            await nc.close()
            return {"errors": errors, "got": got, "answer": answer}

        out = asyncio.run(attack())
        violations = [e for e in out["errors"] if "permissions violation" in e]
        # every subscription and both foreign publishes were refused by the hub
        for what in ("subscription to \"cm.n.", "subscription to \"_i.", "subscription to \">\"",
                     "subscription to \"cm.>\"", "publish to \"$kv.closedmesh." + ident_b.public.lower(),
                     "publish to \"cm.ann." + ident_b.public.lower(),
                     "publish to \"_i." + ident_a.public.lower()):
            assert any(what in v for v in violations), (what, violations)
        assert out["got"] == [], "the hostile node received traffic meant for others"
        assert out["answer"] and "PWNED" not in out["answer"]
        st = mesh_status(a)
        wait_for(lambda: "claims another identity" in hub.log_path.read_text(), 10, what="the hub to drop it")
        models = {m["id"] for m in openai.OpenAI(base_url=a.v1, api_key="x").models.list().model_dump()["data"]}
        assert "evil" not in models and "beta" in models
        b_peer = next(p for p in st["peers"] if p["id"] == ident_b.public)
        assert {m["id"] for m in b_peer["models"]} == {"beta", "SmolLM2-135M-Instruct"}
        assert h.proc.poll() is None and b.proc.poll() is None
    finally:
        for n in nodes.values():
            n.stop()
        hub.stop()


def test_servers_see_routing_metadata_only(tmp_path, model_path):
    """On an open NATS server (the public-mesh protocol: join by URL), a spy that sees every message
    finds neither the prompt nor the answer, and its forged replies are ignored."""
    port = free_port()
    store = tmp_path / "js"
    server = subprocess.Popen([nats_server_binary(), "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"
    a = b = None
    try:
        a = start_mesh_node(tmp_path, "a", model_path, "alpha")
        b = start_mesh_node(tmp_path, "b", model_path, "beta")
        for n, name in ((a, "a"), (b, "b")):
            code, body = api(n, "POST", "/api/mesh/join", {"invite": url, "name": name})
            assert code == 200 and body["state"] == "joined" and body["mode"] == "open", body
        wait_for(lambda: peer_names(a) == {"b"}, 10, what="directory")
        secret = "PAPAYA-7731"

        async def spy() -> tuple[list[bytes], str]:
            seen: list[bytes] = []
            nc = await nats.connect(url)

            forged_to: set[str] = set()

            async def on_msg(msg) -> None:
                seen.append(msg.data)
                if msg.subject.startswith("_I.") and msg.subject not in forged_to:
                    # forge replies to the requester's inbox: it cannot know the session key
                    forged_to.add(msg.subject)
                    for _ in range(50):
                        await nc.publish(msg.subject, seal(os.urandom(32), {"t": "d", "x": ["FORGED"], "n": 1}))

            await nc.subscribe(">", cb=on_msg)
            await nc.flush()
            answer = await asyncio.to_thread(_chat, a, "beta", f"Repeat exactly: the password is {secret}.", 40)
            await asyncio.sleep(0.3)
            await nc.close()
            return seen, answer

        seen, answer = asyncio.run(spy())
        assert len(seen) > 5  # it did see the traffic…
        blob = b"\n".join(seen)
        assert secret.encode() not in blob and b"password" not in blob  # …but not the prompt
        words = [w for w in answer.split() if len(w) >= 6]
        assert all(w.encode() not in blob for w in words), "answer text visible on the wire"
        assert "FORGED" not in answer
        assert mesh_status(b)["served_total"] == 1
    finally:
        for n in (a, b):
            if n is not None:
                n.stop()
        server.terminate()
        server.wait(10)

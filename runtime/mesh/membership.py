"""This node's membership of a mesh: the connection, join and leave (an invite redeemed with a
private hub, or a NATS URL), rejoining the saved mesh at start, reconnecting, and the state the user
sees (off, connecting, joined, reconnecting, error). What runs while connected (announcing, watching
the directory, serving) is the ``Session``'s."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import nats
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from ..errors import NodeError
from .config import MeshConfig
from .identity import Identity, verify
from .protocol import (
    ANNOUNCE_TTL,
    BUCKET,
    DIRECTORY_SUBJECT,
    JOIN_SUBJECT,
    BadInvite,
    canonical,
    decode_invite,
    inbox_prefix,
    join_request,
)
from .tls import client_context

log = logging.getLogger(__name__)

OFF, CONNECTING, JOINED, RECONNECTING, ERROR = "off", "connecting", "joined", "reconnecting", "error"
SAVED = "(the saved mesh)"  # join() target: the mesh this node was last in


class MeshError(NodeError):
    """A join or leave that failed, in words for the user. ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 502, code: str = "mesh_unavailable") -> None:
        super().__init__(message, status=status, code=code)


class Session(Protocol):
    """What runs while this node is connected to a mesh."""

    async def subscribe(self, nc: nats.NATS) -> None:
        """Subscribe on a new connection (part of its setup: a failure fails the join)."""
        ...

    def begin(self, nc: nats.NATS, kv) -> None:
        """The connection is set up: start announcing and watching."""
        ...

    def stop(self) -> None:
        """Stop what ``begin`` started (the connection is about to go)."""
        ...

    async def withdraw(self, nc: nats.NATS, kv) -> None:
        """Delete this node's directory entry (leaving, or shutting down)."""
        ...

    def forget(self) -> None:
        """Disconnected: forget the peers."""
        ...

    def resume(self) -> None:
        """Reconnected after a loss: watch afresh and announce at once."""
        ...


class Membership:
    """``on_state`` is called after every change of ``state`` or ``error``."""

    def __init__(
        self, config: MeshConfig, config_path: Path, ident: Identity, session: Session, on_state: Callable[[], None]
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.ident = ident
        self.session = session
        self._on_state = on_state
        self.state = OFF
        self.error: str | None = None
        self.nc: nats.NATS | None = None
        self.kv: KeyValue | None = None
        self._rejoin_task: asyncio.Task | None = None
        self._closing = False
        self._join_lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self.state == JOINED and self.nc is not None and self.nc.is_connected

    def set_state(self, state: str, error: str | None = None) -> None:
        """Change the state the user sees (``error``: why, in words)."""
        if state == self.state and error == self.error:
            return
        self.state, self.error = state, error
        log.info("mesh: %s%s", state, f" ({error})" if error else "")
        self._on_state()

    async def start(self) -> None:
        """At node start: rejoin the mesh this node was part of (in the background)."""
        if self.config.joined and self.config.urls and self.nc is None:
            self._rejoin_task = asyncio.get_running_loop().create_task(self._rejoin(), name="rejoin")

    async def connect_saved(self) -> None:
        """Connect now to the saved mesh (this node's own hub, at start)."""
        self.set_state(CONNECTING)
        await self._connect(self.config.urls, self.config.mode, self.config.tls)

    async def _rejoin(self) -> None:
        delay = 1.0
        self.set_state(CONNECTING)
        while not self._closing and self.config.joined:
            try:
                await self._connect(self.config.urls, self.config.mode, self.config.tls)
                return
            except MeshError as e:
                self.set_state(RECONNECTING, f"{e}; retrying in {delay:.0f} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def join(self, target: str, name: str | None = None) -> None:
        """Join a mesh: an invite token (private hub) or a NATS URL (an open or public mesh)."""
        target = (target or "").strip()
        if not target and self.config.urls and self.config.mode == "hub":
            target = SAVED  # rejoin the hub this node is a member of: no new invite needed
        elif not target and self.config.urls:
            target = ",".join(self.config.urls)
        if not target:
            raise MeshError("give an invite (cmi1.…) or a mesh URL (nats://host:4222)", 400, "invalid_invite")
        async with self._join_lock:
            if self._rejoin_task is not None:
                self._rejoin_task.cancel()  # the user's choice replaces a background retry of the saved mesh
            if name:
                self.config.name = name[:64]
            if self.nc is None:
                self.set_state(CONNECTING)
            try:
                # Work out where to go first: a bad or used invite leaves a current membership alone.
                if target is SAVED:
                    urls, mode, cert = list(self.config.urls), "hub", self.config.tls
                elif "://" in target:
                    urls, mode, cert = [u.strip() for u in target.split(",") if u.strip()], "open", None
                else:
                    try:
                        invite = decode_invite(target)
                    except BadInvite as e:
                        raise MeshError(str(e), 400, "invalid_invite") from None
                    urls, mode, cert = await self._redeem(invite), "hub", invite.cert
            except MeshError as e:
                if self.nc is None:
                    self.set_state(OFF, str(e))
                raise
            if self.nc is not None:
                await self._disconnect(delete_entry=True)
            self.set_state(CONNECTING)
            try:
                await self._connect(urls, mode, cert)
            except MeshError as e:
                # Not in any mesh now (a previous one was left above): say why, in the state too.
                self.config.joined = False
                self.config.save(self.config_path)
                self.set_state(OFF, str(e))
                raise
            self.config.joined, self.config.urls, self.config.mode, self.config.tls = True, urls, mode, cert
            self.config.save(self.config_path)

    async def leave(self) -> None:
        async with self._join_lock:
            self.config.joined = False
            self.config.save(self.config_path)
            if self._rejoin_task is not None:
                self._rejoin_task.cancel()
            await self._disconnect(delete_entry=True)
            self.set_state(OFF)

    async def close(self) -> None:
        """Node shutdown: leave the directory at once, keep the joined setting so the node rejoins at its
        next start."""
        self._closing = True
        if self._rejoin_task is not None:
            self._rejoin_task.cancel()
        await self._disconnect(delete_entry=True)

    # -- joining --------------------------------------------------------------------------------------

    async def _redeem(self, invite) -> list[str]:
        """Trade an invite for membership: the hub adds this node's key and answers with its addresses."""
        if invite.expires_at < time.time():
            raise MeshError(
                "this invite has expired; ask the hub's owner for a new one (closedmesh mesh invite)",
                400,
                "invite_expired",
            )
        nc = None
        for attempt in range(3):
            try:
                nc = await nats.connect(
                    list(invite.urls),
                    nkeys_seed_str=invite.seed,
                    inbox_prefix=f"_I.{invite.public}",
                    tls=client_context(invite.cert) if invite.cert else None,
                    allow_reconnect=False,
                    connect_timeout=3,
                    max_reconnect_attempts=1,
                    error_cb=_quiet,
                    name="closedmesh-join",
                )
                break
            except Exception as e:
                err = _connect_error(e, invite.urls, invite=True)
                # A connection dropped while the hub reloads its configuration is worth another try; a
                # refused invite or an unreachable hub is not. Give up when: not a connection problem, OR
                # a connection problem that is not a dropped connection (neither "reset" nor "lost"), OR
                # the last attempt. (`and` binds tighter than `or`: this is what the code always meant.)
                text = str(e).lower()
                dropped = "reset" in text or "lost" in text
                if err.code != "hub_unreachable" or not dropped or attempt == 2:
                    raise err from None
                await asyncio.sleep(0.3)
        assert nc is not None
        try:
            msg = await nc.request(JOIN_SUBJECT, join_request(invite, self.ident, self.config.name), timeout=10)
        except Exception as e:
            raise MeshError(
                f"the hub did not answer the join request ({type(e).__name__}); try again", 502, "hub_unavailable"
            ) from None
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
        try:
            doc = json.loads(msg.data)
            result = doc["r"]
            ok = verify(invite.hub, canonical(result), base64.b64decode(doc["sig"]))
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise MeshError(
                "the answer to the join request was not signed by the hub named in the invite; not joining",
                502,
                "hub_impostor",
            )
        if not result.get("ok"):
            raise MeshError(f"the hub refused: {result.get('error', 'no reason given')}", 403, "join_refused")
        return list(invite.urls)

    async def _connect(self, urls: list[str], mode: str, cert: str | None = None) -> None:
        opts: dict[str, Any] = dict(
            servers=urls,
            name=f"closedmesh {self.config.name}",
            inbox_prefix=inbox_prefix(self.ident.public),
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=3,
            ping_interval=5,
            max_outstanding_pings=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        if mode == "hub":
            opts["nkeys_seed_str"] = self.ident.seed
        if cert:
            opts["tls"] = client_context(cert)
        nc = None
        # Right after a join the hub is reloading its configuration: the first attempts may be refused.
        deadline = time.monotonic() + (8 if mode == "hub" and self.state == CONNECTING else 0)
        while True:
            try:
                # (max_reconnect_attempts < 0 would make nats-py retry an unreachable server forever)
                nc = await nats.connect(**dict(opts, allow_reconnect=False, max_reconnect_attempts=1))
                break
            except Exception as e:
                err = _connect_error(e, urls, invite=False)
                # (a reload may also drop a connection that was just made)
                if time.monotonic() >= deadline:
                    raise err from None
                await asyncio.sleep(0.25)
        # Reconnect from here on: nats-py keeps trying with our callbacks (a fresh client with the
        # same options, now that the first connection is proven).
        await nc.close()
        try:
            nc = await asyncio.wait_for(nats.connect(**opts), 15)
            kv = None
            if mode == "hub":
                # The hub writes the directory for its members (members have no JetStream rights): it
                # must answer directory requests.
                try:
                    await nc.request(DIRECTORY_SUBJECT, b"", timeout=5)
                except Exception:
                    raise MeshError(
                        "the hub does not answer directory requests (is it a ClosedMesh hub of this version?)",
                        502,
                        "no_directory",
                    ) from None
            else:
                js = nc.jetstream()
                try:
                    kv = await js.key_value(BUCKET)
                except Exception:
                    kv = await js.create_key_value(
                        KeyValueConfig(bucket=BUCKET, history=1, ttl=ANNOUNCE_TTL * 2, storage=StorageType.FILE)
                    )
            await self.session.subscribe(nc)
            await nc.flush(timeout=5)
        except MeshError:
            await nc.close()
            raise
        except Exception as e:
            with contextlib.suppress(Exception):
                await nc.close()
            raise MeshError(
                f"connected to {urls[0]} but could not set up the mesh there: {e}", 502, "mesh_setup_failed"
            ) from None
        self.nc, self.kv = nc, kv
        self.session.begin(nc, kv)
        self.set_state(JOINED)

    async def _disconnect(self, delete_entry: bool) -> None:
        self.session.stop()
        nc, self.nc = self.nc, None
        if nc is None:
            return
        if delete_entry and nc.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.session.withdraw(nc, self.kv), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), 3)
        with contextlib.suppress(Exception):
            await nc.close()
        self.kv = None
        self.session.forget()

    # -- connection callbacks ---------------------------------------------------------------------------

    async def _on_error(self, e: Exception) -> None:
        text = str(e)
        if "authorization violation" in text.lower() and self.nc is not None:
            self.set_state(
                ERROR,
                "the hub no longer accepts this node (it was removed from the mesh, or the hub "
                "was reset); ask for a new invite",
            )
        elif "permissions violation" in text.lower():
            log.warning("mesh: %s", text)
        else:
            log.debug("mesh connection: %s", text)

    async def _on_disconnected(self) -> None:
        if self.nc is not None and not self._closing and self.state == JOINED:
            self.set_state(RECONNECTING, "lost the connection to the mesh; reconnecting")

    async def _on_reconnected(self) -> None:
        self.set_state(JOINED)
        # The hub may have restarted: watch afresh (its consumers are gone) and announce at once.
        self.session.resume()


async def _quiet(e: Exception) -> None:
    log.debug("mesh join connection: %s", e)


def _connect_error(e: Exception, urls, invite: bool) -> MeshError:
    text = str(e)
    where = ", ".join(urls)
    if "authorization violation" in text.lower():
        if invite:
            return MeshError(
                "the hub does not accept this invite: it was already used, has expired or was "
                "withdrawn; ask for a new one",
                403,
                "invite_rejected",
            )
        return MeshError(
            f"the mesh at {where} refused this node (not a member, or removed from it); join with an invite",
            403,
            "not_authorized",
        )
    return MeshError(
        f"could not reach the mesh at {where} ({type(e).__name__}: {text or 'no answer'}); check that "
        f"the hub is running and reachable from this machine",
        502,
        "hub_unreachable",
    )

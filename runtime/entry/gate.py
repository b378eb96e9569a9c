"""The entry node's gate on its public port: bearer keys on the generating endpoints, the key's limits
(requests a minute, concurrent requests, tokens a day) across all entry nodes, usage recorded from every
answer, and nothing but the public routes reachable (control endpoints stay on loopback).

``EntryService.install`` hooks it into the node's aiohttp application (runtime/api/app.py calls it when
the node runs as an entry): a middleware inside the Host/CORS guard, the rate-limit headers on every
answer (streamed ones too), and the loopback admin API (runtime/entry/admin.py) started with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from typing import Any

import nats
from aiohttp import web

from ..api.app import error_response
from ..api.context import USAGE_SINK
from ..errors import APIError
from .clients import FailureThrottle, client_address
from .keys import (
    LEASE_REFRESH,
    AuthFailure,
    KeyRecord,
    authenticate,
    duration_header,
    seconds_to_midnight,
)
from .options import Counters, EntryOptions
from .store import KeyStore, StoreUnavailable

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/", "/health", "/api/status", "/favicon.ico", "/v1/models"})
OPEN_PREFIXES = ("/v1/models/", "/static/")


def is_open(path: str) -> bool:
    """Answered without a key: the model list, the status, the chat page."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def is_gated(path: str) -> bool:
    """Everything else under /v1 needs a key, whatever it is: a route added later (or one this entry
    does not have) is closed until someone opens it on purpose."""
    return path == "/v1" or path.startswith("/v1/")


RATE_HEADERS = "closedmesh.ratelimit_headers"


class EntryService:
    def __init__(self, node: Any, options: EntryOptions) -> None:
        self.node = node
        self.options = options
        self.nc: nats.NATS | None = None  # the store's own connection to the hub (see connect)
        self.store = KeyStore(lambda: self.nc)
        self.throttle = FailureThrottle(per_minute=options.bad_auth_per_minute, burst=options.bad_auth_per_minute / 2)
        self.counters = Counters()
        self._leases: dict[str, set[str]] = {}  # key id -> leases held by requests running here
        self._tasks: set[asyncio.Task] = set()
        self._refresher: asyncio.Task | None = None
        self._admin_runner: web.AppRunner | None = None
        self.admin_url: str | None = None

    # -- wiring ---------------------------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self.gate)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        app.on_response_prepare.append(self._add_headers)

    async def connect(self) -> None:
        """The key store's own connection to the hub, with this node's identity and membership: the
        membership's connection closes with the mesh when the node stops, before the last answers have
        finished; this one stays until their usage is written (``_on_cleanup``)."""
        from ..mesh.protocol import inbox_prefix
        from ..mesh.tls import client_context

        c, ident = self.node.mesh.config, self.node.mesh.ident
        try:
            self.nc = await nats.connect(
                servers=list(c.urls),
                nkeys_seed_str=ident.seed,
                inbox_prefix=inbox_prefix(ident.public),
                tls=client_context(c.tls) if c.tls else None,
                name=f"closedmesh entry {c.name}",
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=5,
                error_cb=self._connection_error,
            )
        except Exception as e:
            raise StoreUnavailable(
                f"could not connect to the hub for the key store ({type(e).__name__}: {e})"
            ) from None

    async def _connection_error(self, e: Exception) -> None:
        """The store connection uses the key buckets only: any permissions violation on it means the hub no
        longer gives this node the entry role."""
        if "permissions violation" in str(e).lower():
            self.store.access_refused(str(e))
        else:
            log.debug("entry key store connection: %s", e)

    async def _on_startup(self, app: web.Application) -> None:
        from .admin import start_admin

        self.store.start()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_leases(), name="entry-leases")
        self._admin_runner, self.admin_url = await start_admin(self)

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)  # lease releases still on their way
        await self.store.close()  # writes the usage still counted here
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # -- the middleware -------------------------------------------------------------------------

    @web.middleware
    async def gate(self, request: web.Request, handler) -> web.StreamResponse:
        path = request.path
        if is_open(path):
            return await handler(request)
        if not is_gated(path):
            raise APIError(
                404,
                f"Unknown route: {request.method} {path}. This is a ClosedMesh entry node: the OpenAI API is "
                f"under /v1 (GET /v1/models is open; POST /v1/chat/completions needs an API key).",
                "invalid_request_error",
                None,
                "not_found",
            )
        admitted = await self._admit(request)
        if isinstance(admitted, web.Response):
            return admitted
        rec, lease = admitted
        seen: list[tuple[int, int]] = []
        request[USAGE_SINK] = lambda p, c: seen.append((int(p), int(c)))
        resp: web.StreamResponse | None = None
        try:
            resp = await handler(request)
            return resp
        finally:
            if not seen and isinstance(resp, web.Response):
                seen.append(_usage_of(resp))
            prompt, completion = seen[0] if seen else (0, 0)
            self.store.record_usage(rec.id, prompt, completion)
            if lease is not None:
                self._spawn(self._release(rec, lease))

    async def _admit(self, request: web.Request) -> tuple[KeyRecord, str | None] | web.Response:
        now = time.time()
        if self.store.denied is not None:
            raise APIError(
                503,
                "This entry node cannot check API keys right now: the mesh no longer gives it the entry role. "
                "Try again later or use another entry node.",
                "server_error",
                None,
                "entry_role_lost",
                retry_after=30,
            )
        if not self.store.synced.is_set() and not await self.store.wait_synced(5):
            raise APIError(
                503,
                "This entry node is still loading its keys from the mesh; retry in a moment.",
                "server_error",
                None,
                "entry_starting",
                retry_after=2,
            )
        found = authenticate(request.headers.get("Authorization"), self.store.records, now)
        if isinstance(found, AuthFailure):
            return self._refuse(request, found, now)
        rec = found
        headers: dict[str, str] = {}
        try:
            if rec.tokens_per_day is not None:
                used = await self.store.usage(rec.id)
                left = max(0, rec.tokens_per_day - used.tokens)
                reset = duration_header(seconds_to_midnight(now))
                headers.update(
                    {
                        "x-ratelimit-limit-tokens": str(rec.tokens_per_day),
                        "x-ratelimit-remaining-tokens": str(left),
                        "x-ratelimit-reset-tokens": reset,
                    }
                )
                if left <= 0:
                    return self._limited(
                        f"This key has used its {rec.tokens_per_day} tokens for today (UTC); the limit resets "
                        f"in {reset}.",
                        "tokens",
                        math.ceil(seconds_to_midnight(now)),
                        headers,
                    )
            if rec.rpm is not None:
                d = await self.store.take_request(rec)
                headers.update(
                    {
                        "x-ratelimit-limit-requests": str(rec.rpm),
                        "x-ratelimit-remaining-requests": str(d.remaining),
                        "x-ratelimit-reset-requests": duration_header(d.reset_seconds),
                    }
                )
                if not d.allowed:
                    return self._limited(
                        f"Rate limit reached for this key: {rec.rpm} requests per minute. Please try again in "
                        f"{duration_header(d.reset_seconds)}.",
                        "requests",
                        max(1, math.ceil(d.reset_seconds)),
                        headers,
                    )
            lease = None
            if rec.concurrent is not None:
                lease = await self.store.acquire_lease(rec)
                if lease is None:
                    return self._limited(
                        f"This key already has {rec.concurrent} requests running, its limit; send the next one "
                        f"when one of them has finished.",
                        "requests",
                        1,
                        headers,
                        code="concurrency_limit_exceeded",
                    )
                self._leases.setdefault(rec.id, set()).add(lease)
        except StoreUnavailable as e:
            raise APIError(
                503, f"The entry node cannot check this key's limits now: {e}.", "server_error", None, "entry_store"
            ) from None
        self.counters.accepted += 1
        request[RATE_HEADERS] = headers
        return rec, lease

    def _refuse(self, request: web.Request, why: AuthFailure, now: float) -> web.Response:
        client = client_address(request.remote, request.headers.get("X-Forwarded-For"), self.options.trusted_proxies)
        if not self.throttle.allow(client, now):
            self.counters.throttled += 1
            err = APIError(
                429,
                "Too many requests with missing or invalid API keys from your address; wait a minute.",
                "requests",
                None,
                "too_many_invalid_keys",
                retry_after=self.throttle.retry_after(client),
            )
            return error_response(err)
        self.counters.refused += 1
        self.counters.by_code[why.code] = self.counters.by_code.get(why.code, 0) + 1
        resp = error_response(APIError(401, why.message, "invalid_request_error", None, why.code))
        resp.headers["WWW-Authenticate"] = 'Bearer realm="closedmesh"'
        return resp

    def _limited(
        self, message: str, kind: str, retry_after: int, headers: dict[str, str], code: str = "rate_limit_exceeded"
    ) -> web.Response:
        self.counters.limited += 1
        resp = error_response(APIError(429, message, kind, None, code, retry_after=retry_after))
        resp.headers.update(headers)
        return resp

    async def _add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = request.get(RATE_HEADERS)
        if headers and response.status != 429:
            response.headers.update(headers)

    # -- after the answer -----------------------------------------------------------------------

    async def _release(self, rec: KeyRecord, lease: str) -> None:
        held = self._leases.get(rec.id, set())
        held.discard(lease)
        if not held:
            self._leases.pop(rec.id, None)
        try:
            await self.store.release_lease(rec.id, lease)
        except Exception as e:  # it lapses by itself (keys.LEASE_SECONDS)
            log.warning("entry: could not release a lease of key %s: %s", rec.prefix, e)

    async def _refresh_leases(self) -> None:
        """Keep the leases of requests running here alive; when this node dies they expire."""
        while True:
            await asyncio.sleep(LEASE_REFRESH)
            for kid, held in list(self._leases.items()):
                if held:
                    with contextlib.suppress(Exception):
                        await self.store.refresh_leases(kid, set(held))


def _usage_of(resp: web.Response) -> tuple[int, int]:
    """The usage of a JSON answer (a local or non-streamed one); (0, 0) for errors and the like."""
    if resp.status >= 400 or resp.body is None or not (resp.content_type or "").endswith("json"):
        return 0, 0
    try:
        u = json.loads(bytes(resp.body)).get("usage") or {}  # type: ignore[arg-type]
        return int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    except (ValueError, TypeError, AttributeError):
        return 0, 0

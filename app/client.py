"""The app's HTTP client of the node: its own thread with an asyncio loop (aiohttp), results and events
delivered to the Qt thread through signals. The Qt thread never waits on the network.

- ``request()`` runs one API call and hands an :class:`ApiResult` to a callback on the Qt thread.
- ``start_events()`` follows ``GET /api/events`` (reconnecting with backoff while the node restarts)
  and emits ``event(name, data)`` for every server-sent event, ``connected(bool)`` when the stream
  opens or drops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from PySide6.QtCore import QObject, Signal, Slot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiResult:
    status: int  # HTTP status; 0 when the node did not answer at all
    data: Any = None  # the JSON body
    error: str | None = None  # plain words, from the node's OpenAI-shaped error or the connection failure
    code: str | None = None  # the error's "code" (e.g. "not_found" for an unknown route)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def route_missing(self) -> bool:
        """The node does not have this route (an older node, or one built without that feature)."""
        return self.status == 404 and self.code == "not_found"


class SSEParser:
    """Server-sent events, line by line (the ``text/event-stream`` format: ``event:``/``data:`` fields,
    ``:`` comments, a blank line ends an event)."""

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        """One line without its newline; returns (event name, data) when the line completes an event."""
        if line == "":
            if not self._data:
                self._event = "message"
                return None
            out = (self._event, "\n".join(self._data))
            self._event, self._data = "message", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value or "message"
        elif name == "data":
            self._data.append(value)
        return None


def error_message(status: int, body: Any) -> tuple[str, str | None]:
    """(message, code) from an error answer: the OpenAI shape when the node sent one."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return str(err.get("message") or f"HTTP {status}"), err.get("code")
    return f"the node answered HTTP {status}", None


class NodeClient(QObject):
    node_event = Signal(str, object)  # (event name, data) from /api/events (not "event": QObject.event is a method)
    connected = Signal(bool)  # the events stream opened (True) or dropped (False)
    _deliver = Signal(object, object)  # internal: (callback, ApiResult) onto the Qt thread

    def __init__(self, base_url: str, admin_token: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.base_url = base_url.rstrip("/")
        self.admin_token = admin_token
        self._closed = False
        self._events_wanted = False
        self._stream_up = False
        self._events_task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._deliver.connect(self._on_deliver)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="closedmesh-app-client", daemon=True)
        self._thread.start()

    # -- API calls --------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float = 30.0,
        on_done: Callable[[ApiResult], None] | None = None,
    ) -> cf.Future:
        """Run one call on the client thread; ``on_done`` gets the result on the Qt thread. The returned
        future is for tests and shutdown code (never wait on it from the Qt thread)."""
        if self._closed:
            f: cf.Future = cf.Future()
            f.set_result(ApiResult(0, None, "the app is shutting down"))
            return f
        fut = asyncio.run_coroutine_threadsafe(self._request(method, path, body, timeout), self._loop)
        if on_done is not None:
            fut.add_done_callback(lambda f: self._deliver.emit(on_done, self._result_of(f)))
        return fut

    @staticmethod
    def _result_of(f: cf.Future) -> ApiResult:
        try:
            return f.result()
        except BaseException as e:  # cancelled at shutdown
            return ApiResult(0, None, f"the request did not complete ({type(e).__name__})")

    @Slot(object, object)
    def _on_deliver(self, callback: Callable[[ApiResult], None], result: ApiResult) -> None:
        if not self._closed:
            callback(result)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # trust_env=False: a system HTTP proxy must never see requests to the local node
            self._session = aiohttp.ClientSession(trust_env=False)
        return self._session

    async def _request(self, method: str, path: str, body: Any, timeout: float) -> ApiResult:
        session = self._ensure_session()
        try:
            async with session.request(
                method,
                self.base_url + path,
                json=body,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as r:
                try:
                    data = await r.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    data = None
                if 200 <= r.status < 300:
                    return ApiResult(r.status, data)
                message, code = error_message(r.status, data)
                return ApiResult(r.status, data, message, code)
        except TimeoutError:
            return ApiResult(0, None, f"the node did not answer within {timeout:.0f} s")
        except aiohttp.ClientError as e:
            return ApiResult(0, None, f"could not reach the node at {self.base_url} ({e})")

    # -- events ---------------------------------------------------------------------------------------

    def start_events(self) -> None:
        self._events_wanted = True
        if not self._closed:
            self._loop.call_soon_threadsafe(self._restart_events)

    def stop_events(self) -> None:
        """Close the events stream (until ``set_base_url`` or ``start_events``): a node shuts down at once
        only when no stream holds it open."""
        if not self._closed:
            asyncio.run_coroutine_threadsafe(self._cancel_events(), self._loop).result(10)

    async def _cancel_events(self) -> None:
        task, self._events_task = self._events_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _restart_events(self) -> None:
        if self._events_task is not None and not self._events_task.done():
            self._events_task.cancel()
        self._events_task = self._loop.create_task(self._follow_events())

    def set_base_url(self, base_url: str, admin_token: str) -> None:
        """Talk to the node at another address (it restarted on another port); the events stream
        reconnects there."""

        def switch() -> None:
            self.base_url, self.admin_token = base_url.rstrip("/"), admin_token
            if self._events_wanted:
                self._restart_events()

        if not self._closed:
            self._loop.call_soon_threadsafe(switch)

    def _set_stream_up(self, up: bool) -> None:
        if up != self._stream_up:
            self._stream_up = up
            self.connected.emit(up)

    async def _follow_events(self) -> None:
        backoff = 0.2
        while True:
            session = self._ensure_session()
            try:
                # no total timeout: the stream is long-lived; the node sends keep-alive comments
                timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
                async with session.get(self.base_url + "/api/events", headers=self._headers(), timeout=timeout) as r:
                    if r.status != 200:
                        raise aiohttp.ClientResponseError(r.request_info, r.history, status=r.status)
                    parser = SSEParser()
                    buf = b""
                    # chunks, split here: a status line with many peers can exceed aiohttp's line limit
                    async for chunk in r.content.iter_any():
                        buf += chunk
                        *lines, buf = buf.split(b"\n")
                        for raw in lines:
                            got = parser.feed(raw.decode("utf-8", "replace").rstrip("\r"))
                            if got is None:
                                continue
                            name, data = got
                            try:
                                payload = json.loads(data)
                            except ValueError:
                                log.warning("unreadable event %s: %.200s", name, data)
                                continue
                            if name == "status":
                                self._set_stream_up(True)
                                backoff = 0.2
                            self.node_event.emit(name, payload)
            except asyncio.CancelledError:
                self._set_stream_up(False)
                raise
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
                log.debug("events stream: %s", e)
            self._set_stream_up(False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 3.0)

    # -- shutdown ----------------------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything in flight, close the session and join the thread. Callbacks stop here."""
        if self._closed:
            return
        self._closed = True

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._session is not None:
                await self._session.close()
            await self._loop.shutdown_default_executor()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout)
        except (cf.TimeoutError, RuntimeError) as e:
            log.warning("the client did not shut down cleanly: %s", e)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

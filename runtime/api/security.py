"""Host/Origin checks (DNS rebinding, cross-site requests) and the admin token for control endpoints."""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import APIError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _hostname(host_header: str) -> str:
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[: h.find("]") + 1] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


def host_allowed(host_header: str | None, extra: tuple[str, ...]) -> bool:
    """A rebinding attack reaches us under the attacker's domain name. IP literals and loopback names
    are fine; other names only when the user allowed them."""
    if not host_header:
        return True  # HTTP/1.0 clients; browsers always send Host
    name = _hostname(host_header)
    return name in LOOPBACK_NAMES or _is_ip(name) or name in {e.lower() for e in extra} or name.endswith(".localhost")


def origin_allowed(origin: str | None, own_host: str | None, extra: tuple[str, ...]) -> bool:
    """Browsers add Origin to cross-site requests. Allowed: no Origin (not a browser), our own origin
    (the chat page), pages served from loopback, and origins the user listed."""
    if origin is None:
        return True
    if origin in extra or "*" in extra:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https"):
        return False
    name = (parts.hostname or "").lower()
    if own_host and parts.netloc.lower() == own_host.lower():
        return True
    return name in LOOPBACK_NAMES or name == "[::1]"


def check_admin(request: web.Request, token: str) -> None:
    """State-changing control endpoints: the admin token (Authorization: Bearer …) and same-origin."""
    auth = request.headers.get("Authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("X-Admin-Token", "")
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise APIError(
            401,
            "This endpoint changes the node's state and needs the local admin token "
            "(Authorization: Bearer <token>; the token is in the node's config folder, "
            "file 'admin-token').",
            "authentication_error",
            None,
            "admin_token_required",
        )
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() != (request.host or "").lower():
        raise APIError(
            403,
            "Cross-origin requests may not change the node's state.",
            "permission_error",
            None,
            "cross_origin_forbidden",
        )

"""The chat page (GET /) and its static files (GET /static/{name}): plain HTML, CSS and JS shipped in
runtime/static, no build step and no external resources."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from ..errors import APIError

routes = web.RouteTableDef()

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# The page talks only to this node; nothing inline, nothing from elsewhere, no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
COMMON_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _static_file(name: str) -> Path | None:
    """Only plain files directly inside runtime/static, with a known type: no paths, no dotfiles."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        return None
    path = STATIC_DIR / name
    if path.suffix.lower() not in CONTENT_TYPES or path.parent != STATIC_DIR or not path.is_file():
        return None
    return path


def _file_response(path: Path, extra: dict[str, str] | None = None) -> web.Response:
    headers = {**COMMON_HEADERS, **(extra or {})}
    return web.Response(body=path.read_bytes(), headers={"Content-Type": CONTENT_TYPES[path.suffix.lower()], **headers})


@routes.get("/")
async def chat_page(request: web.Request) -> web.Response:
    return _file_response(STATIC_DIR / "chat.html", {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY"})


@routes.get("/static/{name}")
async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    path = _static_file(name)
    if path is None:
        raise APIError(
            404, f"No static file named '{name}'. The chat page is at /.", "invalid_request_error", None, "not_found"
        )
    return _file_response(path)


@routes.get("/favicon.ico")
async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})

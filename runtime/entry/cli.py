"""`closedmesh entry` (run a hosted entry node) and `closedmesh keys` (create, list, revoke API keys
through the entry's loopback admin API). Registered by runtime/cli.py."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from .. import __version__
from ..config import Paths, ServeSettings, admin_token, parse_duration

DEFAULT_ENTRY_PORT = 8443
DEFAULT_ADMIN_PORT = 8444
OPEN_MESH_REFUSED = (
    "an entry node keeps API keys and usage in its mesh, so it runs only as an authenticated member of a "
    "private hub with the entry role, never on an open nats:// mesh. On the hub: closedmesh mesh invite "
    "--role entry; then: closedmesh entry --mesh <invite>"
)


def entry_paths(paths: Paths) -> Paths:
    """An entry node's data folder is its own (data/entry): models downloaded on the same machine
    (data/models) are not served by it. An entry serves no model, ever: every answer comes from the
    mesh, so every answer's usage reaches its key, and no request makes the entry load a model. To
    serve one on the same machine, run `closedmesh serve` there as another member."""
    return dataclasses.replace(paths, data=paths.data / "entry")


def _entry(args: argparse.Namespace) -> int:
    from ..mesh.membership import MeshError
    from ..node import Node
    from ..server import PortInUse, bind_socket, serve
    from .clients import parse_networks
    from .gate import EntryService
    from .options import EntryOptions
    from .store import StoreUnavailable

    try:
        trusted = parse_networks(args.trusted_proxy or [])
    except ValueError as e:
        print(f"closedmesh: --trusted-proxy: {e}", file=sys.stderr)
        return 2
    if args.mesh and "://" in args.mesh:
        print(f"closedmesh: {OPEN_MESH_REFUSED}", file=sys.stderr)
        return 2
    settings = ServeSettings(
        host=args.host,
        port=args.port,
        entry=True,
        keepalive_seconds=args.keepalive,
        read_timeout=args.read_timeout,
        allowed_hosts=tuple(args.public_host or ()),
        allowed_origins=("*",),  # bearer keys, no cookies: any site may call the API with a key
    )
    node = Node(settings, entry_paths(Paths.resolve()))
    saved = node.mesh.config
    member = saved.joined and saved.mode == "hub" and bool(saved.urls)
    if saved.joined and saved.mode != "hub" and not args.mesh:
        print(f"closedmesh: {OPEN_MESH_REFUSED}", file=sys.stderr)
        return 2
    if not args.mesh and not member:
        print("closedmesh: this node is in no mesh yet; give --mesh <invite> (closedmesh mesh invite --role entry)")
        return 2
    node.entry = service = EntryService(
        node, EntryOptions(trusted, admin_port=args.admin_port, bad_auth_per_minute=args.bad_auth_per_minute)
    )
    try:
        sock = bind_socket(settings.host, settings.port)
    except PortInUse as e:
        print(f"closedmesh: {e}", file=sys.stderr)
        return 3
    settings.port = sock.getsockname()[1]

    async def main() -> int:
        try:
            if member:
                await node.mesh.connect_saved()  # an invite is single use: a restart keeps the membership
            else:
                await node.mesh.join(args.mesh, args.name)
            if node.mesh.config.mode != "hub":
                raise MeshError(OPEN_MESH_REFUSED, 400)
            await service.connect()
            await service.store.check_access()
        except (MeshError, StoreUnavailable) as e:
            print(f"closedmesh: {e}", file=sys.stderr)
            if service.nc is not None:
                await service.nc.close()
            await node.mesh.close()
            return 4
        print(
            f"ClosedMesh {__version__} entry node serving the OpenAI API on http://{settings.host}:{settings.port}/v1",
            flush=True,
        )
        await serve(node, sock)
        return 0

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0


# -- keys ------------------------------------------------------------------------------------------


def _admin_base(args: argparse.Namespace) -> str:
    if args.admin_url:
        return args.admin_url.rstrip("/")
    from .admin import ADMIN_FILE

    path = Paths.resolve().config / ADMIN_FILE
    try:
        return json.loads(path.read_text())["url"]
    except (OSError, ValueError, KeyError):
        raise SystemExit(
            "closedmesh: no entry node has run here (no admin address in "
            f"{path}); start one with `closedmesh entry`, or give --admin-url"
        ) from None


def _call(args: argparse.Namespace, method: str, path: str, body: dict | None = None) -> dict:
    base = _admin_base(args)
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {admin_token(Paths.resolve())}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read())["error"]["message"]
        except Exception:
            msg = f"HTTP {e.code}"
        raise SystemExit(f"closedmesh: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        raise SystemExit(
            f"closedmesh: the entry node's admin API at {base} does not answer ({getattr(e, 'reason', e)}); "
            "is `closedmesh entry` running?"
        ) from None


def _limit(v: int | None) -> str:
    return "-" if v is None else str(v)


def _when(t: float | None) -> str:
    return "never" if not t else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _keys_create(args: argparse.Namespace) -> int:

    body = {
        "name": args.name,
        "rpm": args.rpm,
        "concurrent": args.concurrent,
        "tokens_per_day": args.tokens_per_day,
        "expires_in": parse_duration(args.expires) if args.expires else None,
    }
    out = _call(args, "POST", "/admin/keys", body)
    rec = out["record"]
    print(out["key"])
    print(
        f"(key '{rec['name']}' created; it is shown only now: store it safely. Limits: rpm {_limit(rec['rpm'])}, "
        f"concurrent {_limit(rec['concurrent'])}, tokens/day {_limit(rec['tokens_per_day'])}, expires "
        f"{_when(rec['expires_at']) if rec['expires_at'] else 'never'})",
        file=sys.stderr,
    )
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    rows = _call(args, "GET", "/admin/keys")["keys"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'NAME':<20} {'PREFIX':<10} {'STATE':<8} {'RPM':>5} {'CONC':>5} {'TOK/DAY':>9} {'REQ':>6} {'TOKENS':>9}"
        "  LAST USE"
    )
    now = time.time()
    for r in rows:
        state = "revoked" if r["revoked_at"] else "expired" if r["expires_at"] and r["expires_at"] <= now else "active"
        u = r["usage_today"]
        print(
            f"{r['name'][:20]:<20} {r['prefix'] + '…':<10} {state:<8} {_limit(r['rpm']):>5} "
            f"{_limit(r['concurrent']):>5} "
            f"{_limit(r['tokens_per_day']):>9} {u['requests']:>6} {u['prompt_tokens'] + u['completion_tokens']:>9}  "
            f"{_when(r['last_used'])}"
        )
    if rows:
        print(f"(requests and tokens: today, {rows[0]['day']} UTC)", file=sys.stderr)
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    rec = _call(args, "POST", f"/admin/keys/{quote(args.key, safe='')}/revoke", {})["record"]
    print(f"revoked '{rec['name']}' ({rec['prefix']}…): every entry node of the mesh refuses it from now on")
    return 0


def add_commands(sub, node_opts: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    e = sub.add_parser("entry", help="run a hosted entry node: the mesh's OpenAI API behind API keys")
    e.add_argument("--mesh", metavar="INVITE", help="an invite from the hub (closedmesh mesh invite --role entry)")
    e.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    e.add_argument("--port", type=int, default=DEFAULT_ENTRY_PORT, help=f"port (default {DEFAULT_ENTRY_PORT})")
    e.add_argument("--name", help="the name other mesh members see")
    e.add_argument(
        "--public-host",
        action="append",
        help="the host name clients use (behind the proxy), accepted in the Host header (repeatable)",
    )
    e.add_argument(
        "--trusted-proxy",
        action="append",
        metavar="IP|CIDR",
        help="a reverse proxy whose X-Forwarded-For is believed (repeatable; default none)",
    )
    e.add_argument(
        "--admin-port",
        type=int,
        default=DEFAULT_ADMIN_PORT,
        help=f"loopback port of the admin API used by `closedmesh keys` (default {DEFAULT_ADMIN_PORT}; 0: any)",
    )
    e.add_argument("--keepalive", type=float, default=5.0, help="seconds between SSE keep-alive comments")
    e.add_argument("--read-timeout", type=float, default=30.0, help="seconds a request's head and body may take")
    e.add_argument(
        "--bad-auth-per-minute",
        type=float,
        default=120.0,
        help="failed authentications per client address and minute before 429 (default 120)",
    )
    e.set_defaults(func=_entry)

    k = sub.add_parser("keys", help="API keys of the entry node running on this machine")
    ksub = k.add_subparsers(dest="keys_command", required=True)

    def admin_opt(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--admin-url", help="the entry's admin API (default: the one that last ran here)")
        return sp

    kc = admin_opt(ksub.add_parser("create", help="create a key (printed once; only its hash is stored)"))
    kc.add_argument("--name", required=True, help="who or what the key is for")
    kc.add_argument("--rpm", type=int, help="requests per minute, across all entry nodes")
    kc.add_argument("--concurrent", type=int, help="requests running at once")
    kc.add_argument("--tokens-per-day", type=int, help="prompt + completion tokens per UTC day")
    kc.add_argument("--expires", metavar="DURATION", help="valid for this long (e.g. 30d, 12h)")
    kc.set_defaults(func=_keys_create)
    kl = admin_opt(ksub.add_parser("list", help="keys with limits, today's usage and last use (never the key)"))
    kl.add_argument("--json", action="store_true")
    kl.set_defaults(func=_keys_list)
    kr = admin_opt(ksub.add_parser("revoke", help="revoke a key on every entry node"))
    kr.add_argument("key", help="the key's name or the prefix shown by `keys list`")
    kr.set_defaults(func=_keys_revoke)

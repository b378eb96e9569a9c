"""`closedmesh` command line: serve, status, models, mesh, hub.

Every failure a command meets is a ``NodeError`` (runtime/errors.py) that ``main()`` prints, once, with its
exit code. Commands import what only they use inside their function: a command that talks to a running
node (`status`, `models list`) starts in a third of a second instead of loading the node's own imports
(aiohttp, nats, psutil, …).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from . import __version__
from .config import DEFAULT_HOST, DEFAULT_PORT, Paths, ServeSettings, admin_token, node_id, parse_duration
from .errors import NodeError
from .models.embedded import DEFAULT_MODEL_ID

if TYPE_CHECKING:
    from .models.manager import ModelManager


class NodeUnreachable(NodeError):
    """No node answers where the command looked for one."""

    default_status = 503
    default_code = "node_unreachable"


def _unreachable(args: argparse.Namespace, why: str = "") -> NodeUnreachable:
    return NodeUnreachable(f"no node answers at http://{args.host}:{args.port}{why}; start one with: closedmesh serve")


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return v


def _serve(args: argparse.Namespace) -> int:
    from .node import Node
    from .server import bind_socket, serve

    settings = ServeSettings(
        host=args.host,
        port=args.port,
        models=args.model or [],
        slots=args.slots,
        ctx_per_slot=args.ctx_per_slot,
        threads=args.threads,
        gpu_layers=args.gpu_layers,
        max_queue=args.max_queue,
        keepalive_seconds=args.keepalive,
        read_timeout=args.read_timeout,
        engine_stall_timeout=args.engine_stall_timeout,
        model_ttl=args.model_ttl,
        kv_type=args.kv_type,
        memory_budget_bytes=int(args.memory_budget * 2**30) if args.memory_budget else None,
        allowed_hosts=tuple(args.allow_host or ()),
        allowed_origins=tuple(args.allow_origin or ()),
        hub=args.hub,
        hub_host=args.hub_host,
        hub_port=args.hub_port,
    )
    node = Node(settings, Paths.resolve())  # ModelSpecError: exit 2
    sock = bind_socket(settings.host, settings.port)  # PortInUse: exit 3
    settings.port = sock.getsockname()[1]  # --port 0 picks a free port
    print(f"ClosedMesh {__version__} serving the OpenAI API on http://{settings.host}:{settings.port}/v1", flush=True)
    try:
        asyncio.run(serve(node, sock))
    except KeyboardInterrupt:
        pass
    return 0


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _status(args: argparse.Namespace) -> int:
    url = f"http://{args.host}:{args.port}/api/status"
    try:
        st = _get(url)
    except (urllib.error.URLError, OSError) as e:
        raise _unreachable(args, f"/api/status ({getattr(e, 'reason', e)})") from None
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    if st.get("entry"):  # an entry node's open status (docs/entry.md): the mesh's models, nothing else
        print(f"entry node  version {st['version']}  ready={st['ready']}  mesh connected={st['mesh']['connected']}")
        for mid, m in sorted(st["catalog"]["models"].items()):
            fig = m.get("mesh") or {}
            print(
                f"  {mid:<32} peers {m['peers']}  ctx {m.get('context_length')}  "
                f"tok/s p50 (median of peers) {fig.get('tps_p50_median')}  "
                f"best TTFT p50 {fig.get('ttft_ms_p50_best')} ms"
            )
        return 0
    n, c = st["node"], st.get("capability") or {}
    print(f"node {n['id']}  version {n['version']}  up {n['uptime_seconds']:.0f}s  ready={n['ready']}")
    if c:
        print(
            f"backend {c['backend']}  threads {c['threads']}  RAM free {c['ram_free_bytes'] / 2**30:.1f}/"
            f"{c['ram_total_bytes'] / 2**30:.1f} GiB  devices {[d['name'] for d in c['devices']] or 'none'}"
        )
    print(f"requests in flight {st['requests']['in_flight']}, queued {st['requests']['queued']}")
    for m in st["models"]:
        tp = st["throughput"].get(m["id"], {})
        print(
            f"  {m['id']:<32} {m['state']:<8} ctx {m.get('context_length')}  slots {m.get('slots')}  "
            f"tok/s p50 {tp.get('tokens_per_second_p50')}  TTFT p50 {tp.get('ttft_ms_p50')} ms"
            + (f"  error: {m['error']}" if m.get("error") else "")
        )
    mesh = st.get("mesh")
    if mesh:
        peers = st.get("peers", [])
        line = f"mesh {mesh['state']}" + (f" via {mesh['url']}" if mesh.get("url") and mesh["state"] != "off" else "")
        line += f"  {len(peers)} peer{'s' if len(peers) != 1 else ''}" if mesh["state"] != "off" else ""
        print(line + (f"  ({mesh['error']})" if mesh.get("error") else ""))
    return 0


# -- models ------------------------------------------------------------------------------------------


def _node_base(args: argparse.Namespace) -> str | None:
    """The running node's base URL when one answers at --host/--port, else None."""
    base = f"http://{args.host}:{args.port}"
    try:
        urllib.request.urlopen(base + "/health", timeout=2).close()
        return base
    except urllib.error.HTTPError:
        return base  # 503 while loading: it is there
    except (urllib.error.URLError, OSError):
        return None


def _admin_call(base: str, method: str, path: str, body: dict | None = None, timeout: float = 600) -> dict:
    """A control API call to the running node; its refusal is raised as the error it answered."""
    token = admin_token(Paths.resolve())
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())["error"]
            raise NodeError(str(err["message"]), status=e.code, code=err.get("code"), param=err.get("param")) from None
        except (ValueError, KeyError, TypeError):
            raise NodeError(f"HTTP {e.code}", status=e.code) from None


def _bar(p: dict) -> str:
    done, total = p.get("done_bytes") or 0, p.get("total_bytes")
    rate, eta = p.get("rate_bps") or 0, p.get("eta_seconds")
    if total:
        frac = done / total
        bar = "#" * int(frac * 30)
        head = f"[{bar:<30}] {frac * 100:5.1f}% {done / 1e6:,.0f}/{total / 1e6:,.0f} MB"
    else:
        head = f"{done / 1e6:,.0f} MB"
    return f"\r{head}  {rate / 1e6:5.1f} MB/s  ETA {'-' if eta is None else f'{eta:,.0f}s'}   "


def _follow_pull(base: str, model_id: str) -> int:
    """Print a progress bar from the node's /api/events until the pull of ``model_id`` ends."""
    with urllib.request.urlopen(base + "/api/events", timeout=3600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            ev = json.loads(line[6:])
            if ev.get("model", "").lower() != model_id.lower():
                continue
            if ev.get("type") == "download_progress":
                print(_bar(ev), end="", file=sys.stderr, flush=True)
            elif ev.get("type") == "model_state" and ev.get("state") in ("on_disk", "error", "available", "ready"):
                print(file=sys.stderr)
                if ev["state"] in ("on_disk", "ready"):
                    print(f"{model_id}: ready to use")
                    return 0
                raise NodeError(f"the pull of {model_id} failed: {ev.get('error')}", code="download_failed")
    raise NodeError(f"the node stopped reporting the pull of {model_id}", code="download_failed")


def _local_manager() -> ModelManager:
    from .models.manager import ModelManager

    def no_engine():
        raise RuntimeError("loading needs a running node")

    paths = Paths.resolve()
    paths.ensure()
    return ModelManager(paths.models, no_engine, partial_dir=paths.cache / "partial")


def _models_pull(args: argparse.Namespace) -> int:
    base = _node_base(args)
    if base:
        m = _admin_call(base, "POST", "/api/models/pull", {"model": args.ref})
        if m["state"] != "downloading":
            print(f"{m['id']}: already on this machine")
            return 0
        try:
            return _follow_pull(base, m["id"])
        except KeyboardInterrupt:
            _admin_call(base, "POST", f"/api/models/{m['id']}/cancel")
            print("\ncancelled", file=sys.stderr)
            return 130

    async def run() -> int:
        mgr = _local_manager()
        mgr.subscribe(
            lambda ev: ev["type"] == "download_progress" and print(_bar(ev), end="", file=sys.stderr, flush=True)
        )
        try:
            m = mgr.start_pull(args.ref)
            m = await mgr.wait_pull(m.id)
        except NodeError:
            print(file=sys.stderr)  # end the progress bar's line
            raise
        finally:
            await mgr.close()
        print(f"\n{m.id}: ready to use ({m.path})")
        return 0

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        print("\nstopped; the next pull resumes where this one stopped", file=sys.stderr)
        return 130


def _models_rm(args: argparse.Namespace) -> int:
    base = _node_base(args)
    if base:
        _admin_call(base, "DELETE", f"/api/models/{args.id}")
    else:

        async def run() -> None:
            await _local_manager().delete(args.id)

        asyncio.run(run())
    print(f"{args.id}: deleted")
    return 0


def _models_load_unload(args: argparse.Namespace) -> int:
    base = _node_base(args)
    if not base:
        raise _unreachable(args)
    m = _admin_call(base, "POST", f"/api/models/{args.id}/{args.models_command}")
    print(f"{m['id']}: {m['state']}")
    return 0


def _models_token(args: argparse.Namespace) -> int:
    import getpass

    from .models import hf
    from .secrets import SecretStoreUnavailable

    try:
        if args.action == "set":
            token = sys.stdin.readline().strip() if not sys.stdin.isatty() else getpass.getpass("Hugging Face token: ")
            hf.set_token(token)
            print("the Hugging Face token is stored in the OS keyring")
        else:
            print("deleted" if hf.delete_token() else "no token was stored")
    except (SecretStoreUnavailable, ValueError) as e:
        raise NodeError(str(e), code="token_not_stored") from None
    return 0


def _fmt_size(n: int | None, estimate: bool = False) -> str:
    return "-" if not n else f"{'~' if estimate else ''}{n / 1e9:.1f} GB"


def _models_list(args: argparse.Namespace) -> int:
    base = _node_base(args)
    if base:
        data = _admin_call(base, "GET", "/api/models")
    else:
        from .hardware import detect

        data = _local_manager().listing(detect(), 4096, 1)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{'MODEL':<36} {'SIZE':>8}  {'STATE':<11} FIT")
    for row in data["catalog"]:
        fit = (row.get("fit") or {}).get("label", "")
        star = "  ← recommended" if row.get("recommended") else ""
        print(
            f"{row['id']:<36} {_fmt_size(row['size_bytes'], row['size_is_estimate']):>8}  {row['state']:<11} "
            f"{fit}{star}"
        )
    for m in data["local"]:
        print(f"{m['id']:<36} {_fmt_size(m.get('size_bytes')):>8}  {m['state']:<11} {m.get('file') or ''}")
    return 0


def _models_search(args: argparse.Namespace) -> int:
    from .hardware import detect
    from .models.catalog import load_catalog, search
    from .models.fit import assess_fit

    hits = search(args.query, load_catalog())
    if not hits:
        raise NodeError(
            f"no catalog model matches '{args.query}'; a Hugging Face 'owner/repo/file.gguf' or a URL also works "
            f"with `closedmesh models pull`",
            status=404,
            code="model_not_found",
        )
    cap = detect()
    for e in hits:
        print(
            f"{e.id:<36} {_fmt_size(e.estimated_size_bytes(), e.size_is_estimate):>8}  {e.repo}  "
            f"{assess_fit(e, cap).label}"
        )
    return 0


# -- mesh --------------------------------------------------------------------------------------------


def _require_node(args: argparse.Namespace) -> str:
    base = _node_base(args)
    if base is None:
        raise _unreachable(args, ", and this command needs one")
    return base


def _print_mesh(st: dict) -> None:
    line = f"mesh: {st['state']}"
    if st.get("url"):
        line += f" via {st['url']}"
    print(line)
    if st.get("error"):
        print(f"  {st['error']}")
    print(f"this node: {st['node']['name']} ({st['node']['id']})")
    if st.get("hub"):
        print(f"hosting a hub at {', '.join(st['hub']['urls'])}")
    peers = st.get("peers", [])
    print(f"{len(peers)} peer{'s' if len(peers) != 1 else ''}")
    for p in peers:
        models = ", ".join(m["id"] for m in p["models"]) or "no models"
        tps = f"{p['tokens_per_second']:.0f} tok/s" if p.get("tokens_per_second") else "tok/s unknown"
        print(f"  {p['name']:<20} {p['id'][:12]}…  {p['state']:<5} free slots {p.get('free_slots')}  {tps}  {models}")


def _mesh_join(args: argparse.Namespace) -> int:
    base = _require_node(args)
    body = {"invite": args.target}
    if args.name:
        body["name"] = args.name
    _print_mesh(_admin_call(base, "POST", "/api/mesh/join", body, timeout=60))
    return 0


def _mesh_leave(args: argparse.Namespace) -> int:
    _print_mesh(_admin_call(_require_node(args), "POST", "/api/mesh/leave", {}, timeout=30))
    return 0


def _mesh_status(args: argparse.Namespace) -> int:
    st = _get(_require_node(args) + "/api/mesh")
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        _print_mesh(st)
    return 0


def _hub_dir():
    return Paths.resolve().data / "hub"


def _mesh_invite(args: argparse.Namespace) -> int:
    from .mesh.hub import create_invite

    ttl = parse_duration(args.ttl)
    base = _node_base(args)
    if base is not None and _get(base + "/api/mesh").get("hub"):
        inv = _admin_call(base, "POST", "/api/mesh/invite", {"ttl_seconds": ttl, "role": args.role})
        token, urls = inv["invite"], inv["urls"]
    else:
        i = create_invite(_hub_dir(), ttl, args.role)  # a HubError is printed once by main()
        token, urls = i.encode(), list(i.urls)
    print(token)
    print(
        f"(single use, valid for {args.ttl}; hub at {', '.join(urls)}. On the other machine: "
        f"closedmesh mesh join <invite>)",
        file=sys.stderr,
    )
    return 0


def _mesh_revoke(args: argparse.Namespace) -> int:
    from .mesh.hub import admin_identity, load_state, revoke_member

    pub = revoke_member(_hub_dir(), args.node)
    state = load_state(_hub_dir())

    async def purge() -> None:  # gone from the directory at once, not after its entry expires
        import nats

        from .mesh.protocol import BUCKET
        from .mesh.tls import client_context

        admin = admin_identity(_hub_dir(), node_id(Paths.resolve()))
        nc = await nats.connect(
            f"nats://127.0.0.1:{state['port']}",
            nkeys_seed_str=admin.seed,
            allow_reconnect=False,
            connect_timeout=3,
            tls=client_context(state["tls"]) if state.get("tls") else None,
        )
        try:
            kv = await nc.jetstream().key_value(BUCKET)
            await kv.purge(pub)
        finally:
            await nc.close()

    try:
        asyncio.run(purge())
    except Exception as e:
        print(
            f"closedmesh: revoked, but could not clear its directory entry now ({e}); it expires by itself",
            file=sys.stderr,
        )
    print(f"revoked {pub}: it is disconnected and cannot rejoin")
    return 0


def _mesh_role(args: argparse.Namespace) -> int:
    from .mesh.hub import set_role

    pub, name, before = set_role(_hub_dir(), args.node, args.role)  # a HubError is printed once by main()
    if before == args.role:
        print(f"{name} ({pub[:12]}…) already has the {args.role} role")
    elif args.role == "entry":
        print(
            f"{name} ({pub[:12]}…) now has the entry role: it may use the mesh's key and usage buckets "
            "(on that machine: closedmesh entry)"
        )
    else:
        print(f"{name} ({pub[:12]}…) is a plain member again: the key and usage buckets are closed to it")
    return 0


def _hub(args: argparse.Namespace) -> int:
    from .mesh.hub import Hub, HubError
    from .server import stop_on_signals

    paths = Paths.resolve()
    paths.ensure()

    async def run() -> None:
        hub = Hub(paths.data / "hub", node_id(paths), host=args.host, port=args.port)
        try:
            await hub.start()
        except HubError:
            await hub.stop()
            raise
        print(
            f"ClosedMesh hub listening on {', '.join(hub.urls)}; invite nodes with: closedmesh mesh invite", flush=True
        )
        stop = asyncio.Event()
        stop_on_signals(stop)
        try:
            await stop.wait()
        finally:
            await hub.stop()

    try:
        asyncio.run(run())  # HubDidNotStart: exit 3
    except KeyboardInterrupt:
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="closedmesh", description="ClosedMesh node: OpenAI-compatible LLM server on llama.cpp."
    )
    p.add_argument("--version", action="version", version=f"closedmesh {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve the OpenAI API (default http://127.0.0.1:9337/v1)")
    s.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 9337; 0 picks a free one)")
    s.add_argument(
        "--model",
        action="append",
        metavar="PATH|ID",
        help=f"a GGUF file or a model id (repeatable; default {DEFAULT_MODEL_ID})",
    )
    s.add_argument("--slots", type=int, help="parallel sequences per model (default: from the hardware)")
    s.add_argument(
        "--ctx-per-slot",
        type=int,
        help="context length of each slot (default: the trained context, at most 2048 on CPU, 4096 on GPU)",
    )
    s.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    s.add_argument("--gpu-layers", type=int, help="layers to offload to the GPU (default: as many as fit)")
    s.add_argument(
        "--kv-type",
        choices=["f16", "q8_0"],
        default="f16",
        help="KV cache element type (default f16; q8_0 halves the cache but, needing flash "
        "attention, reads prompts ~3x slower on CPU)",
    )
    s.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 503 (default 64)")
    s.add_argument(
        "--model-ttl",
        type=float,
        default=900.0,
        help="seconds an idle on-demand model stays loaded (default 900; models given with --model stay)",
    )
    s.add_argument(
        "--memory-budget",
        type=float,
        metavar="GIB",
        help="GiB that loaded models may use together (default: 80%% of RAM); the least recently used "
        "idle model is unloaded to make room",
    )
    s.add_argument(
        "--keepalive",
        type=float,
        default=5.0,
        help="seconds between SSE keep-alive comments while a stream waits (default 5)",
    )
    s.add_argument(
        "--read-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a request's head must arrive within this, and its body may not stall this long (default 30)",
    )
    s.add_argument(
        "--engine-stall-timeout",
        type=_seconds,
        default=180.0,
        metavar="SECONDS",
        help="a model's engine that has work but shows no progress this long is taken for hung, stopped and "
        "restarted; its requests end with an error (default 180)",
    )
    s.add_argument("--allow-host", action="append", help="extra Host header name to accept (repeatable)")
    s.add_argument("--allow-origin", action="append", help="browser origin allowed to call the API (repeatable)")
    s.add_argument("--hub", action="store_true", help="also run a private mesh hub (embedded nats-server)")
    s.add_argument("--hub-host", default="0.0.0.0", help="address the hub listens on (default: all, for the LAN)")
    s.add_argument("--hub-port", type=int, default=4222, help="the hub's port (default 4222)")
    s.set_defaults(func=_serve)

    st = sub.add_parser("status", help="show a running node's status")
    st.add_argument("--host", default=DEFAULT_HOST)
    st.add_argument("--port", type=int, default=DEFAULT_PORT)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)

    m = sub.add_parser("models", help="find, download, load and remove models")
    msub = m.add_subparsers(dest="models_command", required=True)

    def node_opts(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--host", default=DEFAULT_HOST, help="the node to talk to, when one is running")
        sp.add_argument("--port", type=int, default=DEFAULT_PORT)
        return sp

    ml = node_opts(msub.add_parser("list", help="catalog and local models, with how each fits this machine"))
    ml.add_argument("--json", action="store_true")
    ml.set_defaults(func=_models_list)
    ms = msub.add_parser("search", help="search the catalog")
    ms.add_argument("query")
    ms.set_defaults(func=_models_search)
    mp = node_opts(msub.add_parser("pull", help="download a model (catalog id, owner/repo/file.gguf or URL)"))
    mp.add_argument("ref")
    mp.set_defaults(func=_models_pull)
    mr = node_opts(msub.add_parser("rm", help="delete a downloaded model"))
    mr.add_argument("id")
    mr.set_defaults(func=_models_rm)
    mt = msub.add_parser(
        "token",
        help="store (read from stdin or a prompt) or delete the Hugging Face token "
        "used for gated repos, in the OS keyring",
    )
    mt.add_argument("action", choices=["set", "delete"])
    mt.set_defaults(func=_models_token)
    for verb in ("load", "unload"):
        sp = node_opts(msub.add_parser(verb, help=f"{verb} a model on the running node"))
        sp.add_argument("id")
        sp.set_defaults(func=_models_load_unload)

    me = sub.add_parser("mesh", help="join, leave and manage the mesh")
    mesub = me.add_subparsers(dest="mesh_cmd", required=True)
    mj = node_opts(mesub.add_parser("join", help="join a mesh: an invite (cmi1.…) or a URL (nats://host:4222)"))
    mj.add_argument("target", metavar="INVITE-OR-URL")
    mj.add_argument("--name", help="the name other members see (default: this computer's name)")
    mj.set_defaults(func=_mesh_join)
    node_opts(mesub.add_parser("leave", help="leave the mesh")).set_defaults(func=_mesh_leave)
    mst = node_opts(mesub.add_parser("status", help="mesh state and peers"))
    mst.add_argument("--json", action="store_true")
    mst.set_defaults(func=_mesh_status)
    mi = node_opts(mesub.add_parser("invite", help="print a single-use invite to this machine's hub"))
    mi.add_argument("--ttl", default="24h", help="how long the invite is valid (e.g. 30m, 24h, 7d; default 24h)")
    mi.add_argument(
        "--role",
        choices=["member", "entry"],
        default="member",
        help="'entry': the node may use the mesh's key and usage buckets (a hosted entry node; default member)",
    )
    mi.set_defaults(func=_mesh_invite)
    mr2 = mesub.add_parser("revoke", help="lock a node out of this machine's hub")
    mr2.add_argument("node", help="the node's id (or a unique prefix of it) or name")
    mr2.set_defaults(func=_mesh_revoke)
    mro = mesub.add_parser("role", help="change the role of a member of this machine's hub")
    mro.add_argument("node", help="the node's id (or a unique prefix of it) or name")
    mro.add_argument(
        "role",
        choices=["member", "entry"],
        help="'entry': may use the mesh's key and usage buckets (a hosted entry node); 'member': may not",
    )
    mro.set_defaults(func=_mesh_role)

    h = sub.add_parser("hub", help="run a private mesh hub (embedded nats-server) in the foreground")
    h.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all, for the LAN)")
    h.add_argument("--port", type=int, default=4222, help="port (default 4222)")
    h.set_defaults(func=_hub)

    from .entry.cli import add_commands  # `entry` and `keys` (runtime/entry/cli.py)

    add_commands(sub, node_opts)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.verbose:
        logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG)
    try:
        return args.func(args)
    except NodeError as e:
        print(f"closedmesh: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())

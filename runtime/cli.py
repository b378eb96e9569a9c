"""`closedmesh` command line: serve, models, status."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.error
import urllib.request

from . import __version__
from .config import DEFAULT_HOST, DEFAULT_PORT, Paths, ServeSettings
from .models.embedded import DEFAULT_MODEL_ID, FILENAME as DEFAULT_FILENAME, is_verified
from .models.store import ModelSpecError


def _serve(args: argparse.Namespace) -> int:
    from .node import Node
    from .server import PortInUse, bind_socket, serve

    settings = ServeSettings(
        host=args.host, port=args.port, models=args.model or [], slots=args.slots, ctx_per_slot=args.ctx_per_slot,
        threads=args.threads, gpu_layers=args.gpu_layers, max_queue=args.max_queue,
        keepalive_seconds=args.keepalive, model_ttl=args.model_ttl, kv_type=args.kv_type,
        memory_budget_bytes=int(args.memory_budget * 2**30) if args.memory_budget else None,
        allowed_hosts=tuple(args.allow_host or ()), allowed_origins=tuple(args.allow_origin or ()),
    )
    paths = Paths.resolve()
    try:
        node = Node(settings, paths)
    except ModelSpecError as e:
        print(f"closedmesh: {e}", file=sys.stderr)
        return 2
    try:
        sock = bind_socket(settings.host, settings.port)
    except PortInUse as e:
        print(f"closedmesh: {e}", file=sys.stderr)
        return 3
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
        print(f"closedmesh: no node answers at {url} ({getattr(e, 'reason', e)}). Start one with: closedmesh serve",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    n, c = st["node"], st.get("capability") or {}
    print(f"node {n['id']}  version {n['version']}  up {n['uptime_seconds']:.0f}s  ready={n['ready']}")
    if c:
        print(f"backend {c['backend']}  threads {c['threads']}  RAM free {c['ram_free_bytes'] / 2**30:.1f}/"
              f"{c['ram_total_bytes'] / 2**30:.1f} GiB  devices {[d['name'] for d in c['devices']] or 'none'}")
    print(f"requests in flight {st['requests']['in_flight']}, queued {st['requests']['queued']}")
    for m in st["models"]:
        tp = st["throughput"].get(m["id"], {})
        print(f"  {m['id']:<32} {m['state']:<8} ctx {m.get('context_length')}  slots {m.get('slots')}  "
              f"tok/s p50 {tp.get('tokens_per_second_p50')}  TTFT p50 {tp.get('ttft_ms_p50')} ms"
              + (f"  error: {m['error']}" if m.get("error") else ""))
    return 0


def _models_list(args: argparse.Namespace) -> int:
    paths = Paths.resolve()
    rows = []
    if paths.models.is_dir():
        for f in sorted(paths.models.glob("*.gguf")):
            rows.append((DEFAULT_MODEL_ID if f.name == DEFAULT_FILENAME else f.stem, f.stat().st_size, str(f)))
    if not any(r[0] == DEFAULT_MODEL_ID for r in rows):
        rows.insert(0, (DEFAULT_MODEL_ID, None, "embedded default: fetched on first `closedmesh serve`"))
    if args.json:
        print(json.dumps([{"id": i, "size_bytes": s, "location": loc} for i, s, loc in rows], indent=2))
        return 0
    print(f"models folder: {paths.models}")
    for i, s, loc in rows:
        size = f"{s / 1e6:.0f} MB" if s else "-"
        print(f"  {i:<32} {size:>8}  {loc}")
    default = paths.models / DEFAULT_FILENAME
    if default.exists() and not is_verified(default):
        print("  note: the default model file has not been verified yet; `closedmesh serve` checks it.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="closedmesh", description="ClosedMesh node: OpenAI-compatible LLM server "
                                                               "on llama.cpp.")
    p.add_argument("--version", action="version", version=f"closedmesh {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve the OpenAI API (default http://127.0.0.1:9337/v1)")
    s.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 9337; 0 picks a free one)")
    s.add_argument("--model", action="append", metavar="PATH|ID",
                   help=f"a GGUF file or a model id (repeatable; default {DEFAULT_MODEL_ID})")
    s.add_argument("--slots", type=int, help="parallel sequences per model (default: from the hardware)")
    s.add_argument("--ctx-per-slot", type=int, help="context length of each slot (default: min(trained, 4096))")
    s.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    s.add_argument("--gpu-layers", type=int, help="layers to offload to the GPU (default: as many as fit)")
    s.add_argument("--kv-type", choices=["f16", "q8_0"], default="f16",
                   help="KV cache element type (default f16; q8_0 halves the cache but, needing flash "
                        "attention, reads prompts ~3x slower on CPU)")
    s.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 503 (default 64)")
    s.add_argument("--model-ttl", type=float, default=900.0,
                   help="seconds an idle on-demand model stays loaded (default 900; models given with --model stay)")
    s.add_argument("--memory-budget", type=float, metavar="GIB",
                   help="GiB that loaded models may use together (default: 80%% of RAM); the least recently used "
                        "idle model is unloaded to make room")
    s.add_argument("--keepalive", type=float, default=5.0,
                   help="seconds between SSE keep-alive comments while a stream waits (default 5)")
    s.add_argument("--allow-host", action="append", help="extra Host header name to accept (repeatable)")
    s.add_argument("--allow-origin", action="append", help="browser origin allowed to call the API (repeatable)")
    s.set_defaults(func=_serve)

    st = sub.add_parser("status", help="show a running node's status")
    st.add_argument("--host", default=DEFAULT_HOST)
    st.add_argument("--port", type=int, default=DEFAULT_PORT)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)

    m = sub.add_parser("models", help="manage local models")
    msub = m.add_subparsers(dest="models_command", required=True)
    ml = msub.add_parser("list", help="list models on this machine")
    ml.add_argument("--json", action="store_true")
    ml.set_defaults(func=_models_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:
        logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

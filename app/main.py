"""``closedmesh-app``: the tray app. It runs the node itself (on a background thread) and takes the same
options as ``closedmesh serve`` (``--port``, ``--model``, ``--ctx-per-slot``…), plus ``--minimized``
(start in the tray without opening the window; what start-at-login uses).

A second launch brings the first one's window forward and exits.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import signal
import sys

from runtime import __version__
from runtime.cli import build_parser as build_cli_parser
from runtime.config import Paths, ServeSettings


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, ServeSettings, int | None]:
    """(app options, the node's settings, the port given on the command line or None)."""
    app = argparse.ArgumentParser(prog="closedmesh-app", add_help=False)
    app.add_argument("--minimized", action="store_true")
    app.add_argument("--port", type=int)
    app.add_argument("-h", "--help", action="store_true")
    own, rest = app.parse_known_args(argv)
    if own.help:
        print("usage: closedmesh-app [--minimized] [options of `closedmesh serve`]\n\n"
              "The ClosedMesh tray app: runs the node and shows what it does.\n"
              "  --minimized   start in the tray without opening the window\n"
              "  --port PORT   the API port (default: the one in Settings, 9337)\n\n"
              "The other options are those of `closedmesh serve`:\n")
        build_cli_parser().parse_args(["serve", "--help"])  # prints and exits
    # The node's options, parsed by the CLI's own parser, so both accept exactly the same ones.
    args = build_cli_parser().parse_args(["serve", *rest])
    settings = ServeSettings(
        host=args.host, models=args.model or [], slots=args.slots, ctx_per_slot=args.ctx_per_slot,
        threads=args.threads, gpu_layers=args.gpu_layers, max_queue=args.max_queue,
        keepalive_seconds=args.keepalive, model_ttl=args.model_ttl, kv_type=args.kv_type,
        memory_budget_bytes=int(args.memory_budget * 2**30) if args.memory_budget else None,
        allowed_hosts=tuple(args.allow_host or ()), allowed_origins=tuple(args.allow_origin or ()),
    )
    own.verbose = args.verbose
    return own, settings, own.port


def _logging(paths: Paths, verbose: bool) -> None:
    paths.logs.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    f = logging.handlers.RotatingFileHandler(paths.logs / "app.log", maxBytes=5_000_000, backupCount=3,
                                             encoding="utf-8")
    f.setFormatter(fmt)
    root.addHandler(f)
    s = logging.StreamHandler()
    s.setFormatter(fmt)
    root.addHandler(s)


def main(argv: list[str] | None = None) -> int:
    own, serve_settings, port = parse_args(list(sys.argv[1:] if argv is None else argv))
    paths = Paths.resolve()
    paths.ensure()

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from . import icons
    from .single_instance import SingleInstance

    qt_app = QApplication.instance() or QApplication([sys.argv[0]])
    qt_app.setApplicationName("ClosedMesh")
    qt_app.setApplicationVersion(__version__)
    qt_app.setQuitOnLastWindowClosed(False)  # the tray keeps the app (and the node) running
    qt_app.setWindowIcon(icons.app_icon())

    single = SingleInstance(paths.config)
    if not single.acquire():
        if single.notify_first():
            print("ClosedMesh is already running: its window was brought forward.", flush=True)
            return 0
        print("ClosedMesh seems to be running already, but it does not answer. If it is stuck, end it and "
              "start again.", file=sys.stderr)
        return 1

    _logging(paths, own.verbose)
    from .controller import AppController

    def started(p: int) -> None:  # the same line as `closedmesh serve`, for scripts and run.sh users
        print(f"ClosedMesh {__version__} serving the OpenAI API on http://{serve_settings.host}:{p}/v1", flush=True)

    controller = AppController(paths, serve_settings, on_quit=qt_app.quit, on_started=started, port_override=port)
    single.activated.connect(lambda: controller.show_window())

    # Ctrl-C and SIGTERM quit cleanly. Python runs signal handlers only between bytecodes, so a timer
    # lets the interpreter run now and then while Qt's loop waits.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: QTimer.singleShot(0, controller.quit))
    wake = QTimer()
    wake.start(250)
    wake.timeout.connect(lambda: None)

    controller.start(show_window=not own.minimized)
    rc = qt_app.exec()
    single.release()
    return rc


if __name__ == "__main__":
    sys.exit(main())

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
from collections.abc import Callable
from dataclasses import fields
from typing import Any, cast

from runtime import __version__
from runtime.cli import build_parser as build_cli_parser
from runtime.config import Paths, ServeSettings

# ServeSettings fields whose `closedmesh serve` option has another name or form; every other field is
# taken from the option of the same name (so new options reach the node without a change here).
_RENAMED_OPTIONS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "models": lambda a: a.model or [],
    "keepalive_seconds": lambda a: a.keepalive,
    "memory_budget_bytes": lambda a: int(a.memory_budget * 2**30) if a.memory_budget else None,
    "allowed_hosts": lambda a: tuple(a.allow_host or ()),
    "allowed_origins": lambda a: tuple(a.allow_origin or ()),
}


def serve_settings_from(args: argparse.Namespace) -> ServeSettings:
    """The node's settings from parsed `closedmesh serve` options (the port is the app's to choose)."""
    kwargs: dict[str, Any] = {}
    for f in fields(ServeSettings):
        if f.name in _RENAMED_OPTIONS:
            kwargs[f.name] = _RENAMED_OPTIONS[f.name](args)
        elif f.name != "port" and hasattr(args, f.name):
            kwargs[f.name] = getattr(args, f.name)
    return ServeSettings(**kwargs)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, ServeSettings, int | None]:
    """(app options, the node's settings, the port given on the command line or None)."""
    app = argparse.ArgumentParser(prog="closedmesh-app", add_help=False)
    app.add_argument("--minimized", action="store_true")
    app.add_argument("--port", type=int)
    app.add_argument("-h", "--help", action="store_true")
    own, rest = app.parse_known_args(argv)
    if own.help:
        print(
            "usage: closedmesh-app [--minimized] [options of `closedmesh serve`]\n\n"
            "The ClosedMesh tray app: runs the node and shows what it does.\n"
            "  --minimized   start in the tray without opening the window\n"
            "  --port PORT   the API port (default: the one in Settings, 9337)\n\n"
            "The other options are those of `closedmesh serve`:\n"
        )
        build_cli_parser().parse_args(["serve", "--help"])  # prints and exits
    # The node's options, parsed by the CLI's own parser, so both accept exactly the same ones.
    args = build_cli_parser().parse_args(["serve", *rest])
    settings = serve_settings_from(args)
    own.verbose = args.verbose
    return own, settings, own.port


def _logging(paths: Paths, verbose: bool) -> None:
    paths.logs.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    f = logging.handlers.RotatingFileHandler(
        paths.logs / "app.log", maxBytes=5_000_000, backupCount=3, encoding="utf-8"
    )
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

    qt_app = cast(QApplication, QApplication.instance() or QApplication([sys.argv[0]]))
    qt_app.setApplicationName("ClosedMesh")
    qt_app.setApplicationVersion(__version__)
    qt_app.setQuitOnLastWindowClosed(False)  # the tray keeps the app (and the node) running
    qt_app.setWindowIcon(icons.app_icon())

    single = SingleInstance(paths.config)
    if not single.acquire():
        if single.notify_first():
            print("ClosedMesh is already running: its window was brought forward.", flush=True)
            return 0
        print(
            "ClosedMesh seems to be running already, but it does not answer. If it is stuck, end it and start again.",
            file=sys.stderr,
        )
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

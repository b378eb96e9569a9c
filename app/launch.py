"""What the README's run command starts: the tray app when there is a display, the headless node
otherwise. ``scripts/run.sh`` ends in ``python -m app.launch ARGS``; the arguments pass through to
whichever it starts (both take the options of ``closedmesh serve``).

No Qt here: deciding must not need a display. On Linux the tray app also needs system libraries that
Qt's xcb platform plugin loads and many systems lack (``libxcb-cursor0``, ``libxcb-icccm4``…); without
them Qt aborts with "could not load the Qt platform plugin". So the launcher checks for them first and,
when some are missing, says which packages to install and starts the headless node instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

# The system libraries Qt's xcb platform plugin (PySide6 6.12: libqxcb.so and libQt6XcbQpa.so.6) needs
# that PySide6 does not ship (all but the C/C++ runtime), with the Debian/Ubuntu package of each
# (Fedora: xcb-util-cursor, xcb-util-wm, xcb-util-keysyms, xcb-util-image, xcb-util-renderutil, libxkbcommon-x11).
# tests/packaging/test_xcb_check.py checks this table against the installed plugin's ELF dependencies.
XCB_LIBRARIES: dict[str, str] = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libz.so.1": "zlib1g",
    "libzstd.so.1": "libzstd1",
}


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


def needs_xcb(system: str, env: Mapping[str, str], args: list[str]) -> bool:
    """Whether starting the tray app will load Qt's xcb platform plugin: on Linux and other X11 systems,
    unless another Qt platform is chosen (QT_QPA_PLATFORM=offscreen, wayland…) or only --help is asked."""
    if system in ("Darwin", "Windows") or "-h" in args or "--help" in args:
        return False
    platform_name = env.get("QT_QPA_PLATFORM", "").strip()
    return platform_name == "" or platform_name.startswith("xcb")


def missing_xcb_libraries(can_load: Callable[[str], bool]) -> list[str]:
    """The sonames of XCB_LIBRARIES that this system cannot load."""
    return [soname for soname in XCB_LIBRARIES if not can_load(soname)]


def xcb_message(missing: list[str]) -> str:
    """What to tell the user: what is missing, what to install, and what happens instead."""
    packages = sorted({XCB_LIBRARIES[soname] for soname in missing})
    return (
        f"The ClosedMesh desktop app needs system libraries this computer lacks ({', '.join(missing)}).\n"
        f"Install them with:\n\n    sudo apt-get install {' '.join(packages)}\n\n"
        "(Debian/Ubuntu names; on Fedora: sudo dnf install xcb-util-cursor xcb-util-wm xcb-util-keysyms "
        "xcb-util-image xcb-util-renderutil libxkbcommon-x11), then start it again.\n"
        "Starting the headless node meanwhile: the OpenAI API works the same (its address follows), "
        "without the tray icon."
    )


def can_load_library(soname: str) -> bool:
    """Whether the dynamic linker finds and loads ``soname`` (what Qt will do when it loads the plugin)."""
    import ctypes

    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def gui_or_headless(
    system: str, env: Mapping[str, str], args: list[str], can_load: Callable[[str], bool] = can_load_library
) -> tuple[bool, str | None]:
    """(start the tray app?, a message for the user or None)."""
    if not display_available(system, env):
        return False, None
    if needs_xcb(system, env, args):
        missing = missing_xcb_libraries(can_load)
        if missing:
            return False, xcb_message(missing)
    return True, None


def main(argv: list[str] | None = None) -> int:
    import platform

    args = list(sys.argv[1:] if argv is None else argv)
    system = platform.system()
    gui, message = gui_or_headless(system, os.environ, args)
    if message:
        print(message, file=sys.stderr, flush=True)
    if not gui:
        args = [a for a in args if a != "--minimized"]  # the tray app's own option; serve does not take it
    cmd = command(gui, Path(sys.executable).parent, args, windows=system == "Windows")
    if system == "Windows":  # no exec there: run it and pass its exit status on
        import subprocess

        return subprocess.call(cmd)
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())

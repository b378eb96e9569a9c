"""The run command checks for the system libraries Qt's xcb platform plugin needs before it starts the
tray app (app/launch.py): with some missing it names the packages to install and starts the headless node,
instead of Qt aborting with "could not load the Qt platform plugin"."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app import launch
from app.launch import XCB_LIBRARIES, gui_or_headless, missing_xcb_libraries, needs_xcb, xcb_message

REPO = Path(__file__).resolve().parents[2]
DISPLAY = {"DISPLAY": ":0"}


def all_but(*absent: str):
    return lambda soname: soname not in absent


def test_missing_libraries_mean_the_headless_node_and_the_packages_to_install():
    gui, message = gui_or_headless("Linux", DISPLAY, [], can_load=all_but("libxcb-cursor.so.0", "libxcb-icccm.so.4"))
    assert gui is False
    assert "sudo apt-get install libxcb-cursor0 libxcb-icccm4\n" in message
    assert "libxcb-cursor.so.0, libxcb-icccm.so.4" in message
    assert "headless node" in message


def test_with_every_library_the_tray_app_starts():
    assert gui_or_headless("Linux", DISPLAY, ["--port", "9444"], can_load=all_but()) == (True, None)


@pytest.mark.parametrize("system, env, args, checked", [
    ("Linux", DISPLAY, [], True),
    ("Linux", {**DISPLAY, "QT_QPA_PLATFORM": "xcb"}, [], True),
    ("Linux", {**DISPLAY, "QT_QPA_PLATFORM": "offscreen"}, [], False),
    ("Linux", {"WAYLAND_DISPLAY": "wayland-0", "QT_QPA_PLATFORM": "wayland"}, [], False),
    ("Linux", DISPLAY, ["--help"], False),  # prints usage, never starts Qt
    ("Darwin", {}, [], False),
    ("Windows", {}, [], False),
])
def test_when_the_check_applies(system, env, args, checked):
    assert needs_xcb(system, env, args) is checked
    gui, message = gui_or_headless(system, env, args, can_load=all_but("libxcb-cursor.so.0"))
    assert (gui, message is not None) == ((False, True) if checked else (True, False))


def test_no_display_means_headless_without_a_library_message():
    assert gui_or_headless("Linux", {}, [], can_load=all_but("libxcb-cursor.so.0")) == (False, None)


def test_package_names_are_listed_once_and_sorted():
    msg = xcb_message(["libxcb-render.so.0", "libxcb-render-util.so.0", "libxcb-cursor.so.0"])
    assert "sudo apt-get install libxcb-cursor0 libxcb-render-util0 libxcb-render0\n" in msg


def test_the_real_loader_finds_libc_and_not_a_made_up_library():
    assert launch.can_load_library("libc.so.6")
    assert not launch.can_load_library("libclosedmesh-does-not-exist.so.9")
    assert missing_xcb_libraries(lambda s: s != "libxcb-xkb.so.1") == ["libxcb-xkb.so.1"]


def test_the_launcher_says_what_to_install_and_starts_the_headless_node(tmp_path):
    """For real: a launcher whose xcb check fails (a library that cannot exist is added to the table)
    prints the message and execs `closedmesh serve` (--help, so no node starts)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "CLOSEDMESH_HEADLESS", "QT_QPA_PLATFORM")}
    env.update(DISPLAY=":99", PYTHONPATH=str(REPO))
    code = ("import sys; from app import launch; launch.XCB_LIBRARIES['libxcb-made-up.so.7'] = 'libxcb-made-up7'; "
            "launch.needs_xcb = lambda *a: True; sys.exit(launch.main(['--help']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert re.search(r"sudo apt-get install .*libxcb-made-up7", p.stderr)
    assert "usage: closedmesh serve" in p.stdout


def test_deb_depends_on_every_package_of_the_table():
    """The .deb declares the same packages as dependencies (installers/linux/deb.py)."""
    from installers.linux.deb import DEPENDS

    declared = {d.split()[0] for d in DEPENDS}
    assert set(XCB_LIBRARIES.values()) <= declared


# The C and C++ runtime: every Linux system has them (the .deb's libc6/libstdc++6 dependencies).
BASE_RUNTIME = {"libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libgcc_s.so.1",
                "libstdc++.so.6", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}


def elf_needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the xcb plugin exists on Linux only")
def test_the_table_is_exactly_what_the_installed_xcb_plugin_needs_from_the_system():
    """Walk the ELF dependencies of PySide6's libqxcb.so through the Qt libraries PySide6 ships: whatever
    is left comes from the system, and is exactly the launcher's table (plus the C/C++ runtime)."""
    import PySide6

    qt = Path(PySide6.__file__).parent / "Qt"
    shipped = {p.name for p in (qt / "lib").iterdir()}
    todo, seen, system = [qt / "plugins" / "platforms" / "libqxcb.so"], set(), set()
    while todo:
        for name in elf_needed(todo.pop()):
            if name in shipped:
                if name not in seen:
                    seen.add(name)
                    todo.append(qt / "lib" / name)
            else:
                system.add(name)
    assert "libQt6XcbQpa.so.6" in seen
    assert system - BASE_RUNTIME == set(XCB_LIBRARIES)

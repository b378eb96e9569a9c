"""Builds the Debian package of the desktop bundle (run by scripts/package.sh):

    python -m installers.linux.deb ONEDIR ICONS_DIR OUT.deb --version 0.1.0

Layout: the PyInstaller onedir in /opt/closedmesh, ``closedmesh`` and ``closedmesh-app`` on PATH through
links in /usr/bin, a .desktop entry and the icon in the hicolor theme. The Qt xcb libraries the tray app
needs are declared as dependencies (the same table as the run command's check, app/launch.py), so
``apt install ./ClosedMesh-Linux-x86_64.deb`` brings them. Removing the package stops every process
running from /opt/closedmesh (the app, its engine workers, a hub's nats-server) and removes the
start-at-login entries that point at it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from app.launch import XCB_LIBRARIES

PACKAGE = "closedmesh"
PREFIX = "/opt/closedmesh"
ICON_SIZES = (16, 32, 48, 64, 128, 256, 512)

# Beyond the xcb table: what the bundle's own libraries load from the system.
_SYSTEM = ("libgomp1", "libstdc++6", "zlib1g")
DEPENDS: tuple[str, ...] = tuple(sorted(set(XCB_LIBRARIES.values()) | set(_SYSTEM)))

DESKTOP_ENTRY = """[Desktop Entry]
Type=Application
Name=ClosedMesh
GenericName=Local AI node
Comment=Run language models on this computer and share them in a private mesh
Exec=/usr/bin/closedmesh-app
Icon=closedmesh
Terminal=false
Categories=Network;
Keywords=AI;LLM;OpenAI;mesh;
StartupNotify=false
"""

_STOP_PROCESSES = f"""stop_closedmesh() {{
    pids=""
    for exe in /proc/[0-9]*/exe; do
        target=$(readlink "$exe" 2>/dev/null) || continue
        case "$target" in
            {PREFIX}/*) pid=${{exe#/proc/}}; pids="$pids ${{pid%/exe}}" ;;
        esac
    done
    [ -n "$pids" ] || return 0
    echo "Stopping ClosedMesh (processes:$pids)"
    kill -TERM $pids 2>/dev/null || true
    i=0
    while [ $i -lt 100 ]; do
        alive=""
        for p in $pids; do [ -d "/proc/$p" ] && alive="$alive $p"; done
        [ -n "$alive" ] || return 0
        sleep 0.1
        i=$((i + 1))
    done
    kill -KILL $alive 2>/dev/null || true
}}
"""

# Start-at-login entries are per user (app/autostart.py writes ~/.config/autostart/closedmesh.desktop);
# only those that start this installation are removed.
_REMOVE_AUTOSTART = f"""remove_autostart() {{
    for f in /root/.config/autostart/closedmesh.desktop /home/*/.config/autostart/closedmesh.desktop; do
        [ -f "$f" ] || continue
        if grep -q -E '^Exec=("?){PREFIX}/|^Exec=("?)/usr/bin/closedmesh-app' "$f"; then
            rm -f "$f"
            echo "Removed the start-at-login entry $f"
        fi
    done
}}
"""

PRERM = f"""#!/bin/sh
# Runs before the files are removed (remove, upgrade): nothing may keep running from {PREFIX}.
set -e
{_STOP_PROCESSES}
stop_closedmesh
if [ "$1" = remove ] || [ "$1" = purge ]; then
{_REMOVE_AUTOSTART}
    remove_autostart
fi
exit 0
"""

POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
    command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q /usr/share/applications || true
    command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t /usr/share/icons/hicolor || true
fi
exit 0
"""


def control(version: str, arch: str, installed_kib: int, libc: str | None) -> str:
    """The DEBIAN/control file."""
    depends = ([f"libc6 (>= {libc})"] if libc else []) + list(DEPENDS)
    return (f"Package: {PACKAGE}\n"
            f"Version: {version}\n"
            f"Architecture: {arch}\n"
            "Maintainer: ClosedMesh maintainers <maintainers@closedmesh.invalid>\n"
            f"Installed-Size: {installed_kib}\n"
            f"Depends: {', '.join(depends)}\n"
            "Section: net\n"
            "Priority: optional\n"
            "Description: ClosedMesh: a local OpenAI-compatible LLM node that joins a peer-to-peer mesh\n"
            " The desktop app (tray icon) and the `closedmesh` command, with llama.cpp, nats-server and the\n"
            " default model (SmolLM2-135M-Instruct) inside: the first start works offline and serves the\n"
            " OpenAI API on http://localhost:9337/v1.\n")


_GLIBC = re.compile(rb"GLIBC_(\d+)\.(\d+)(?:\.(\d+))?")


def glibc_needed(files: list[Path]) -> str | None:
    """The newest GLIBC_x.y symbol version any of these ELF files needs (the libc6 dependency)."""
    best: tuple[int, ...] = ()
    for f in files:
        out = subprocess.run(["objdump", "-T", str(f)], capture_output=True).stdout
        for m in _GLIBC.finditer(out):
            best = max(best, tuple(int(x) for x in m.groups() if x is not None))
    return ".".join(map(str, best)) or None


def _elf_files(root: Path) -> list[Path]:
    out = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    out.append(p)
    return out


def _du_kib(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()) // 1024 + 1


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def build(onedir: Path, icons: Path, out: Path, version: str, arch: str | None = None) -> Path:
    """Stage the package tree and run dpkg-deb (xz) on it."""
    arch = arch or subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                                  check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="closedmesh-deb-") as tmp:
        root = Path(tmp) / "root"
        opt = root / PREFIX.lstrip("/")
        shutil.copytree(onedir, opt, symlinks=True)
        for d in [opt, *opt.rglob("*")]:  # readable by every user, whatever the build machine's umask
            if not d.is_symlink():
                mode = d.stat().st_mode
                d.chmod(mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
                        | ((stat.S_IXGRP | stat.S_IXOTH) if mode & stat.S_IXUSR else 0))
        bindir = root / "usr" / "bin"
        bindir.mkdir(parents=True)
        for prog in ("closedmesh", "closedmesh-app"):
            if not (opt / prog).is_file():
                raise SystemExit(f"{onedir} has no {prog}: is it the PyInstaller onedir of build.spec?")
            os.symlink(f"{PREFIX}/{prog}", bindir / prog)
        apps = root / "usr" / "share" / "applications"
        apps.mkdir(parents=True)
        (apps / "closedmesh.desktop").write_text(DESKTOP_ENTRY)
        for size in ICON_SIZES:
            dst = root / "usr" / "share" / "icons" / "hicolor" / f"{size}x{size}" / "apps" / "closedmesh.png"
            dst.parent.mkdir(parents=True)
            shutil.copy2(icons / f"closedmesh-{size}.png", dst)
        doc = root / "usr" / "share" / "doc" / PACKAGE
        doc.mkdir(parents=True)
        (doc / "copyright").write_text("ClosedMesh is licensed under the Apache License 2.0; the bundled "
                                       "third-party components keep their own licenses.\n")
        debian = root / "DEBIAN"
        debian.mkdir()
        libc = glibc_needed(_elf_files(opt))
        (debian / "control").write_text(control(version, arch, _du_kib(root), libc))
        _script(debian / "prerm", PRERM)
        _script(debian / "postinst", POSTINST)
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(out)], check=True,
                       stdout=subprocess.DEVNULL)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m installers.linux.deb", description=__doc__.split("\n\n")[0])
    p.add_argument("onedir", type=Path)
    p.add_argument("icons", type=Path, help="folder with closedmesh-<size>.png (assets/generated)")
    p.add_argument("out", type=Path)
    p.add_argument("--version", required=True)
    p.add_argument("--arch")
    a = p.parse_args(argv)
    print(build(a.onedir, a.icons, a.out, a.version, a.arch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

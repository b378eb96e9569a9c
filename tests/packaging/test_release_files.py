"""The release workflow passes actionlint, the README's download links name files the workflow publishes,
the AppImage's entry starts the right program, and the .deb's maintainer scripts are valid shell."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from installers.linux import deb

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
needs_node = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="actionlint runs on Node.js (scripts/test.sh requires it)")


@needs_node
def test_release_workflow_passes_actionlint():
    r = subprocess.run(["bash", str(REPO / "scripts" / "lint_workflows.sh")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "passed" in r.stdout


@needs_node
def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The linter really checks (an unknown action input and an undefined context property)."""
    subprocess.run(["bash", str(REPO / "scripts" / "lint_workflows.sh")], capture_output=True, timeout=300)
    broken = tmp_path / ".github" / "workflows" / "release.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WORKFLOW.read_text().replace("python-version: ${{ env.PYTHON_VERSION }}",
                                                   "python-versoin: ${{ env.PYTHON_VERSON }}", 1))
    tool = REPO / ".cache" / "actionlint" / "node_modules" / "@tktco" / "node-actionlint" / "bin" / "node-actionlint.js"
    r = subprocess.run(["node", str(tool)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode != 0
    assert "python-versoin" in r.stdout and "PYTHON_VERSON" in r.stdout


def test_readme_download_links_are_files_the_workflow_publishes():
    readme = (REPO / "README.md").read_text()
    names = re.findall(r"\]\(\.\./\.\./releases/latest/download/([^)]+)\)", readme)
    assert {n.split("-")[1] for n in names} >= {"macOS", "Windows", "Linux"}, names
    workflow = WORKFLOW.read_text()
    for name in names:
        produced = name.replace("x86_64", "${{ matrix.arch }}").replace("arm64", "${{ matrix.arch }}")
        assert name in workflow or produced in workflow, f"{name} is not published by release.yml"
    assert "release/ClosedMesh-*" in workflow
    # the developer commands stay
    assert "bash scripts/run.sh\n" in readme and "bash scripts/test.sh\n" in readme


def test_appimage_entry_starts_the_app_or_the_cli(tmp_path):
    appdir = tmp_path / "AppDir"
    bindir = appdir / "usr" / "lib" / "closedmesh"
    bindir.mkdir(parents=True)
    for prog in ("closedmesh", "closedmesh-app"):
        (bindir / prog).write_text(f'#!/bin/sh\necho "{prog} $*"\n')
        (bindir / prog).chmod(0o755)
    shutil.copy2(REPO / "installers" / "linux" / "appimage" / "AppRun", appdir / "AppRun")

    def run(*args: str) -> str:
        return subprocess.run([str(appdir / "AppRun"), *args], capture_output=True, text=True, check=True).stdout

    assert run() == "closedmesh-app \n"
    assert run("--minimized") == "closedmesh-app --minimized\n"
    assert run("serve", "--port", "9444") == "closedmesh serve --port 9444\n"
    assert run("--version") == "closedmesh --version\n"


def test_deb_maintainer_scripts_parse_and_the_control_file_is_complete():
    for script in (deb.PRERM, deb.POSTINST):
        subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    control = deb.control("0.1.0", "amd64", 123456, "2.34")
    fields = dict(line.split(": ", 1) for line in control.splitlines() if not line.startswith(" "))
    assert fields["Package"] == "closedmesh" and fields["Architecture"] == "amd64"
    assert fields["Depends"].startswith("libc6 (>= 2.34), ") and "libxcb-cursor0" in fields["Depends"]


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None, reason="desktop-file-utils is not installed")
def test_desktop_entry_is_valid(tmp_path):
    f = tmp_path / "closedmesh.desktop"
    f.write_text(deb.DESKTOP_ENTRY)
    r = subprocess.run(["desktop-file-validate", str(f)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout


def test_the_uninstaller_stops_processes_and_removes_only_our_autostart_entries(tmp_path):
    """The prerm's two functions, run for real against a fake root: a process started from the install
    prefix is stopped; autostart entries that start this installation go, others stay."""
    prefix = tmp_path / "opt" / "closedmesh"
    prefix.mkdir(parents=True)
    sleeper = prefix / "closedmesh"
    shutil.copy2("/bin/sleep", sleeper)
    proc = subprocess.Popen([str(sleeper), "300"])
    homes = tmp_path / "home"
    ours = homes / "ann" / ".config" / "autostart" / "closedmesh.desktop"
    theirs = homes / "bob" / ".config" / "autostart" / "closedmesh.desktop"
    for f, exe in ((ours, f"{deb.PREFIX}/closedmesh-app --minimized"), (theirs, "/home/bob/src/.venv/bin/closedmesh-app")):
        f.parent.mkdir(parents=True)
        f.write_text(f"[Desktop Entry]\nExec={exe}\n")
    script = (deb.PRERM.replace(deb.PREFIX, str(prefix)).replace("/home/*/", f"{homes}/*/")
              .replace("/root/.config", str(tmp_path / "root" / ".config")))
    # the entry's Exec names the real prefix: point the pattern at it as the package would be installed
    script = script.replace(f"^Exec=(\"?){prefix}/", f"^Exec=(\"?){deb.PREFIX}/")
    try:
        r = subprocess.run(["sh", "-c", script, "prerm", "remove"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert proc.wait(timeout=15) is not None
        assert not ours.exists() and theirs.exists()
        assert "Stopping ClosedMesh" in r.stdout
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is Debian's")
def test_deb_layout_from_a_small_onedir(tmp_path):
    """installers/linux/deb.py for real on a stand-in onedir: dpkg-deb accepts it, and the package holds
    the bundle in /opt/closedmesh, both programs on PATH, the desktop entry, the icons and the scripts."""
    onedir = tmp_path / "closedmesh"
    (onedir / "_internal").mkdir(parents=True)
    for prog in ("closedmesh", "closedmesh-app"):
        shutil.copy2("/bin/true", onedir / prog)  # an ELF file: the libc dependency is computed from it
    (onedir / "_internal" / "data.txt").write_text("x")
    (onedir / "_internal" / "data.txt").chmod(0o600)  # a build machine's umask must not leak
    out = deb.build(onedir, REPO / "assets" / "generated", tmp_path / "out" / "c.deb", "0.1.0", "amd64")
    info = subprocess.run(["dpkg-deb", "-f", str(out)], capture_output=True, text=True, check=True).stdout
    assert "Version: 0.1.0" in info and re.search(r"Depends: libc6 \(>= 2\.\d+\), .*libxcb-cursor0", info)
    listing = subprocess.run(["dpkg-deb", "-c", str(out)], capture_output=True, text=True, check=True).stdout
    for path in ("./opt/closedmesh/closedmesh-app", "./usr/share/applications/closedmesh.desktop",
                 "./usr/share/icons/hicolor/256x256/apps/closedmesh.png", "./usr/bin/closedmesh -> /opt/closedmesh/closedmesh"):
        assert path in listing, path
    data_line = next(ln for ln in listing.splitlines() if ln.endswith("/_internal/data.txt"))
    assert data_line.startswith("-rw-r--r-- root/root")
    scripts = subprocess.run(["dpkg-deb", "-I", str(out)], capture_output=True, text=True, check=True).stdout
    assert "prerm" in scripts and "postinst" in scripts

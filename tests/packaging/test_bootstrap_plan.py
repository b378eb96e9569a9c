"""scripts/bootstrap.sh decides, from llama-cpp-python's version, the Python tag and the CMake flags, which
cached wheel to use and whether to reinstall. A changed CMAKE_ARGS (e.g. -DGGML_CUDA=on from the README)
must lead to a new build and a reinstall, not pip's "Requirement already satisfied".

The real script runs, in a copy of the files it reads, with CLOSEDMESH_BOOTSTRAP_PLAN=1: it prints its
decisions and changes nothing (a real rebuild takes ten minutes; this tests the decision, not the compile)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    for rel in ("scripts/bootstrap.sh", "pyproject.toml", "runtime/portable_build.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    return root


def plan(root: Path, cmake_args: str | None, extras: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CMAKE_ARGS"}
    env.update(CLOSEDMESH_BOOTSTRAP_PLAN="1", PYTHON=sys.executable, XDG_CACHE_HOME=str(root.parent / "cache"))
    if cmake_args is not None:
        env["CMAKE_ARGS"] = cmake_args
    r = subprocess.run(["bash", str(root / "scripts" / "bootstrap.sh"), *([extras] if extras else [])], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return dict(line.split("=", 1) for line in r.stdout.splitlines())


def install(root: Path, decision: dict[str, str], extras: str = "runtime") -> None:
    """What a finished bootstrap leaves behind: the cached wheel and the install stamp."""
    wheel_dir = Path(decision["wheel_dir"])
    wheel_dir.mkdir(parents=True, exist_ok=True)
    (wheel_dir / "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl").write_bytes(b"built")
    (root / ".venv").mkdir(exist_ok=True)
    (root / ".venv" / f".closedmesh-install-{extras}").write_text(decision["fingerprint"] + "\n")


def test_changed_cmake_args_rebuild_and_reinstall(tree):
    first = plan(tree, None)
    assert first["cmake_args"].startswith("-DGGML_NATIVE=OFF")
    assert (first["wheel"], first["install"]) == ("build", "needed")
    install(tree, first)

    again = plan(tree, None)
    assert again == {**first, "wheel": "cached", "install": "up-to-date"}

    cuda = plan(tree, "-DGGML_CUDA=on")
    assert cuda["cmake_args"] == first["cmake_args"] + " -DGGML_CUDA=on"  # the user's flag last: it wins
    assert cuda["wheel_dir"] != first["wheel_dir"]
    assert (cuda["wheel"], cuda["install"]) == ("build", "needed")

    install(tree, cuda)
    assert plan(tree, "-DGGML_CUDA=on")["install"] == "up-to-date"
    # going back to the CPU build reuses its cached wheel but reinstalls it (the venv holds the CUDA one)
    back = plan(tree, "")
    assert (back["wheel_dir"], back["wheel"], back["install"]) == (first["wheel_dir"], "cached", "needed")


def test_a_new_llama_cpp_python_version_is_a_new_wheel(tree):
    before = plan(tree, None)
    pyproject = tree / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"llama-cpp-python==0.3.36"', '"llama-cpp-python==0.3.37"'))
    after = plan(tree, None)
    assert after["wheel_dir"] != before["wheel_dir"]
    assert after["install"] == "needed"


def test_a_test_install_satisfies_a_plain_one_but_not_the_reverse(tree):
    install(tree, plan(tree, None, "test"), "test")
    assert plan(tree, None)["install"] == "up-to-date"
    assert plan(tree, None, "test")["install"] == "up-to-date"
    assert plan(tree, None, "test,package")["install"] == "needed"


def test_the_install_forces_pip_to_replace_an_installed_build():
    # pip keeps an installed build of the same version unless forced; the script must force it for the
    # llama-cpp-python wheel (and only for it: --no-deps).
    script = (REPO / "scripts" / "bootstrap.sh").read_text()
    install_lines = [ln for ln in script.splitlines() if "pip install" in ln and "llama_cpp_python-" in ln]
    assert install_lines and all("--force-reinstall" in ln and "--no-deps" in ln for ln in install_lines)

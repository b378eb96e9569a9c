"""A CPU variant folder loads its own ggml, and why the bundle keeps no llama.cpp links at its top level.

A worker runs a variant by pointing LLAMA_CPP_LIB_PATH at its folder. The PyInstaller bootloader puts the
bundle's top folder on LD_LIBRARY_PATH, which the dynamic linker searches before a library's RUNPATH
($ORIGIN): if that folder held a libggml, the variant's libllama would load it instead of its own. Here a
"variant" is a copy of the installed build in its own folder, and a "bundle top" holds links to the
installed build, as PyInstaller makes them; a child process loads llama.cpp and reports where from."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from installers.pyinstaller.bundle_filter import is_unused
from installers.pyinstaller.llama_libs import llama_libraries

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_LIBRARY_PATH and /proc: Linux")

INSTALLED = Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib"
PROBE = """
import json, llama_cpp
llama_cpp.llama_backend_init()
maps = open("/proc/self/maps").read().split()
print(json.dumps(sorted({p.rsplit("/", 1)[0] for p in maps if "/lib" in p and ("ggml" in p or "llama" in p)})))
"""


def loaded_from(variant: Path, ld_library_path: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["LLAMA_CPP_LIB_PATH"] = str(variant)
    if ld_library_path:
        env["LD_LIBRARY_PATH"] = ld_library_path
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def bundle(tmp_path) -> tuple[Path, Path]:
    top, variant = tmp_path / "_internal", tmp_path / "_internal" / "llama_variants" / "x86-64-v2"
    variant.mkdir(parents=True)
    for lib in llama_libraries(INSTALLED):
        shutil.copy2(lib, variant / lib.name)
    return top, variant


def test_a_variant_folder_loads_only_its_own_libraries(bundle):
    top, variant = bundle
    assert loaded_from(variant, str(top)) == [str(variant)]


def test_top_level_links_would_mix_builds_and_the_bundle_filter_drops_them(bundle):
    top, variant = bundle
    for lib in llama_libraries(INSTALLED):
        if ".so." in lib.name:  # the sonames, as PyInstaller links them at the top
            (top / lib.name).symlink_to(lib)
            assert is_unused(lib.name), f"build.spec would keep the top-level {lib.name}"
    dirs = loaded_from(variant, str(top))
    assert str(variant) in dirs and len(dirs) > 1, dirs  # the hazard: another build's ggml in the process

"""PyInstaller hook for llama-cpp-python: its shared libraries are loaded by ctypes from a path computed at
run time (``llama_cpp/lib`` next to the package, or LLAMA_CPP_LIB_PATH), which PyInstaller cannot see.

They are collected into ``llama_cpp/lib`` inside the bundle, where the frozen package looks for them.
CLOSEDMESH_LLAMA_LIB_DIR replaces the installed package's libraries with another build's (package.sh
passes the most portable CPU variant when it builds variants, so that nothing in the bundle is built for
the packaging machine's CPU)."""

import os
from pathlib import Path

from PyInstaller.utils.hooks import collect_data_files, get_package_paths

from installers.pyinstaller.llama_libs import llama_libraries

_, _pkg_dir = get_package_paths("llama_cpp")
_lib_dir = Path(os.environ.get("CLOSEDMESH_LLAMA_LIB_DIR") or Path(_pkg_dir) / "lib")
binaries = [(str(p), "llama_cpp/lib") for p in llama_libraries(_lib_dir)]
if not binaries:
    raise SystemExit(f"hook-llama_cpp: no llama.cpp shared libraries in {_lib_dir}")
datas = collect_data_files("llama_cpp", excludes=["lib/**", "**/*.h", "**/*.cmake"])

"""Which files of a llama.cpp build folder a bundle needs (shared by the PyInstaller hook and the variant
build script): the shared libraries of llama, ggml (base, CPU and any GPU backend) and mtmd.

On Linux each library comes under three names (``libllama.so``, the soname ``libllama.so.0`` and the full
version ``libllama.so.0.5.0``), copies in a wheel. llama-cpp-python loads the first, the libraries find
each other by the second; the third is never opened, so it stays out (a third of the size)."""

from __future__ import annotations

import re
from pathlib import Path

_PREFIXES = ("llama", "ggml", "mtmd")
_FULL_VERSION = re.compile(r"\.so\.\d+\.\d+(\.\d+)*$")


def is_llama_library(name: str) -> bool:
    """``libllama.so``, ``libggml-cpu.so.0``, ``libmtmd.dylib``, ``ggml-base.dll``…; not the full-version
    names (``libllama.so.0.5.0``), import libraries (``.lib``), static archives, CMake or pkg-config files."""
    base = name[3:] if name.startswith("lib") else name
    if not base.startswith(_PREFIXES) or _FULL_VERSION.search(name):
        return False
    return name.endswith((".so", ".dylib", ".dll")) or ".so." in name


def llama_libraries(lib_dir: Path) -> list[Path]:
    """The shared libraries in ``lib_dir``, sorted (symbolic links included as found)."""
    if not lib_dir.is_dir():
        return []
    return sorted(p for p in lib_dir.iterdir() if p.is_file() and is_llama_library(p.name))

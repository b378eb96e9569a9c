"""Which build of the llama.cpp libraries an engine worker loads.

A source install has one build: the libraries inside the installed llama-cpp-python package (built
portably by scripts/bootstrap.sh). The desktop bundle ships a short fixed list of CPU variants of the
same libraries, each in its own folder under ``llama_variants/<name>/``; the best one the running CPU
supports is tried first, and a variant whose worker died from SIGILL/SIGBUS at its first load and decode
(the probe) is remembered as unusable on this machine and skipped from then on (runtime/engine/probe.py).

llama-cpp-python loads its libraries from ``LLAMA_CPP_LIB_PATH`` when set, so a worker process started
with that variable pointing at a variant's folder runs that variant; the node's own process never loads
llama.cpp at all.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

# Best first. Each variant needs every listed /proc/cpuinfo flag (x86 spelling), and is built with exactly
# the ggml options those flags enable (variant_cmake_args), so a CPU that has the flags can run the build.
# AMX is in none of them: it is the instruction set seen advertised by a VM and then trapped (see
# runtime/portable_build.py). The sets are nested, so each variant is a fallback for the one above it.
_V2 = frozenset({"sse4_2", "popcnt"})  # x86-64-v2: every x86-64 CPU of the last ~15 years
_AVX2 = _V2 | {"avx", "avx2", "fma", "f16c", "bmi2"}  # Haswell (2013) / Zen and later
_AVX512 = _AVX2 | {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}  # Skylake-X / Zen 4 and later
X86_VARIANTS: tuple[tuple[str, frozenset[str]], ...] = (
    ("avx512", _AVX512),
    ("avx2", _AVX2),
    ("x86-64-v2", _V2),
)
ARM64_VARIANT = "arm64"  # one build: the platform's baseline (portable_build.cmake_args_for)
INSTALLED = "installed"  # the libraries of the installed llama-cpp-python package (source install)


def variant_names(machine: str) -> list[str]:
    """The variants the packaging script builds for a machine architecture, best first."""
    if machine.lower() in ("x86_64", "amd64"):
        return [name for name, _ in X86_VARIANTS]
    if machine.lower() in ("arm64", "aarch64"):
        return [ARM64_VARIANT]
    raise ValueError(f"no llama.cpp variants are defined for the {machine} architecture")


def variant_cmake_args(name: str, system: str) -> list[str]:
    """The CMake arguments of one variant's build: the portable flags of a CPU that has exactly the
    variant's required instruction sets (pure; used by scripts/build_llama_variants.py)."""
    from ..portable_build import cmake_args_for

    if name == ARM64_VARIANT:
        return cmake_args_for(system, "arm64", ())
    for known, needs in X86_VARIANTS:
        if known == name:
            return cmake_args_for(system, "x86_64", needs)
    raise ValueError(f"unknown llama.cpp variant {name!r}")


@dataclass(frozen=True)
class LibraryVariant:
    name: str
    lib_dir: Path | None  # None: llama-cpp-python's own lib folder

    def env(self) -> dict[str, str]:
        """Environment for a worker process that must load this variant."""
        return {"LLAMA_CPP_LIB_PATH": str(self.lib_dir)} if self.lib_dir is not None else {}


def variants_root() -> Path | None:
    """Where a bundle keeps its variants: ``CLOSEDMESH_LLAMA_VARIANTS``, else ``llama_variants`` inside a
    PyInstaller bundle; None for a source install."""
    env = os.environ.get("CLOSEDMESH_LLAMA_VARIANTS")
    if env:
        return Path(env)
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle and (Path(bundle) / "llama_variants").is_dir():
        return Path(bundle) / "llama_variants"
    return None


def supported_variants(names: list[str], cpu_flags: frozenset[str], machine: str) -> list[str]:
    """The variant names (of those present) this CPU can run, best first (pure)."""
    if machine.lower() in ("x86_64", "amd64"):
        order = [n for n, needs in X86_VARIANTS if n in names and (not cpu_flags or needs <= cpu_flags)]
        # Unknown extra folders (e.g. "cuda") are tried before the CPU-only ones, in name order.
        extra = sorted(n for n in names if n not in {v for v, _ in X86_VARIANTS})
        return extra + order
    return sorted(names)


def candidates(
    root: Path | None = None, cpu_flags: frozenset[str] | None = None, machine: str | None = None
) -> list[LibraryVariant]:
    """The builds to try, best first. Without bundled variants: the installed package's libraries."""
    import platform

    root = root if root is not None else variants_root()
    if root is None or not root.is_dir():
        return [LibraryVariant(INSTALLED, None)]
    names = [p.name for p in root.iterdir() if p.is_dir()]
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
    chosen = supported_variants(names, cpu_flags, machine or platform.machine())
    return [LibraryVariant(n, root / n) for n in chosen] or [LibraryVariant(INSTALLED, None)]


def _cpu_flags() -> frozenset[str]:
    from ..portable_build import cpu_flags_linux

    try:
        return cpu_flags_linux(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return frozenset()  # not Linux: trust the order and let the probe catch a bad pick

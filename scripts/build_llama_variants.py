"""Builds the CPU variants of the llama.cpp libraries that the desktop bundle ships (package.sh --variants).

Each variant (runtime/engine/variants.py: avx512, avx2 and x86-64-v2 on x86-64, one on arm64) is a CMake
build of only the llama, ggml and mtmd shared libraries of the llama.cpp vendored in the llama-cpp-python
sdist of the pinned version, through that sdist's own CMakeLists (the same options as the wheel), with
GGML_NATIVE=OFF and exactly the variant's instruction sets, never AMX. The libraries land in
OUT/<variant>/ with RUNPATH $ORIGIN, so each loads its own ggml.

    .venv/bin/python scripts/build_llama_variants.py --out build/llama-variants [--jobs 2] [--only avx2]

A variant whose folder already holds a build made with the same arguments is kept (about 10 minutes a
variant on 2 cores). Needs CMake and a C/C++ compiler, like a source install.
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from installers.pyinstaller.llama_libs import llama_libraries  # noqa: E402
from runtime.engine.variants import variant_cmake_args, variant_names  # noqa: E402

# Only the libraries: no tests, examples, tools or server (the mtmd library comes from the sdist's own
# CMakeLists, which adds it).
ONLY_LIBRARIES = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                  "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF"]
TARGETS = ["llama", "mtmd"]  # ggml, ggml-base and ggml-cpu come along as their dependencies
STAMP = "cmake-args.txt"


def pinned_version() -> str:
    m = re.search(r'"llama-cpp-python==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    if not m:
        raise SystemExit("pyproject.toml pins no llama-cpp-python version")
    return m.group(1)


def sdist_source(version: str, work: Path) -> Path:
    """The unpacked sdist (downloaded once with pip, through its cache)."""
    src = work / f"llama_cpp_python-{version}"
    if (src / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        return src
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    "-d", str(work), f"llama-cpp-python=={version}"], check=True)
    with tarfile.open(work / f"llama_cpp_python-{version}.tar.gz") as tf:
        tf.extractall(work, filter="data")
    return src


def configure_args(name: str, system: str) -> list[str]:
    return ONLY_LIBRARIES + variant_cmake_args(name, system)


def runpath_is_origin(lib: Path) -> bool:
    """Whether an ELF library finds its siblings next to itself (RUNPATH/RPATH $ORIGIN)."""
    out = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    return re.search(r"\((?:RUNPATH|RPATH)\)\s+Library (?:runpath|rpath): \[\$ORIGIN\]", out) is not None


def build_variant(name: str, src: Path, build: Path, out: Path, jobs: int) -> None:
    system = platform.system()
    args = configure_args(name, system)
    dest = out / name
    if (dest / STAMP).is_file() and (dest / STAMP).read_text().split() == args and llama_libraries(dest):
        print(f"    {name}: already built ({dest})", flush=True)
        return
    print(f"    {name}: {' '.join(args)}", flush=True)
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), *args], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs), "--target", *TARGETS],
                   check=True, stdout=subprocess.DEVNULL)
    found: dict[str, Path] = {}
    for folder in sorted({p.parent for p in build.rglob("*") if p.is_file() or p.is_symlink()}):
        for lib in llama_libraries(folder):
            found.setdefault(lib.name, lib)
    if not any(n.startswith(("libllama.", "llama.")) for n in found):
        raise SystemExit(f"the {name} build produced no llama library (looked in {build})")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for fname, lib in found.items():
        shutil.copy2(lib.resolve(), dest / fname)  # a copy of the file a link points to
    if system == "Linux":
        bad = [p.name for p in llama_libraries(dest) if not runpath_is_origin(p)]
        if bad:
            raise SystemExit(f"the {name} libraries {bad} do not look for their siblings in $ORIGIN")
    (dest / STAMP).write_text(" ".join(args) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "build" / "llama-variants")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--only", action="append", help="build only this variant (repeatable)")
    a = p.parse_args(argv)
    names = variant_names(platform.machine())
    for name in a.only or []:
        if name not in names:
            p.error(f"{name} is not a variant of this architecture ({', '.join(names)})")
    src = sdist_source(pinned_version(), ROOT / "build" / "llama-sdist")
    for name in a.only or names:
        build_variant(name, src, ROOT / "build" / "llama-variants-build" / name, a.out, a.jobs)
    print(f"variants in {a.out}: {', '.join(sorted(d.name for d in a.out.iterdir() if d.is_dir()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

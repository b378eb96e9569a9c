#!/usr/bin/env bash
# Builds the desktop bundle and the Linux packages from this checkout (a fresh clone is enough):
#
#   dist/closedmesh/                        the PyInstaller onedir: closedmesh, closedmesh-app, _internal/
#   dist/ClosedMesh-Linux-<arch>.tar.gz     that folder as a tarball (unpack anywhere, run closedmesh-app)
#   dist/ClosedMesh-Linux-<arch>.deb        the Debian/Ubuntu package (Linux, with dpkg-deb)
#
#   bash scripts/package.sh [--variants] [--no-bootstrap] [--bundle-only]
#
#   --variants      also build the CPU variants of the llama.cpp libraries (x86-64: avx512, avx2,
#                   x86-64-v2; arm64: one) from the llama.cpp vendored in the llama-cpp-python sdist,
#                   into build/llama-variants (about 10 minutes each on 2 cores; reused when present).
#                   The bundle then carries them in llama_variants/ and the most portable one in
#                   llama_cpp/lib. Without it the bundle carries the .venv's build (portable flags, but
#                   for this machine's CPU: fine for a local package, not for a release).
#   --no-bootstrap  use .venv as it is (it must have the `package` extra installed)
#   --bundle-only   stop after the onedir (the macOS and Windows jobs make their installers themselves)
#
# Then test what was built with no venv and no source tree involved: bash scripts/smoke_frozen.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VARIANTS=0 BOOTSTRAP=1 BUNDLE_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --variants) VARIANTS=1 ;;
        --no-bootstrap) BOOTSTRAP=0 ;;
        --bundle-only) BUNDLE_ONLY=1 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "package.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

[ "$BOOTSTRAP" = 1 ] && bash scripts/bootstrap.sh package
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY="$ROOT/.venv/Scripts/python.exe"  # Windows (Git Bash)
if ! "$PY" -c 'import PyInstaller' 2>/dev/null; then
    echo "package.sh: PyInstaller is not installed in .venv; run without --no-bootstrap (or: $PY -m pip install -e '.[package]')" >&2
    exit 1
fi
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    echo "package.sh: note: the checkout has uncommitted changes; the bundle is built from the files as they are." >&2
fi

VERSION="$("$PY" -c 'from runtime import __version__; print(__version__)')"
OS="$("$PY" -c 'import platform; print({"Darwin": "macOS"}.get(platform.system(), platform.system()))')"
ARCH="$("$PY" -c 'import platform; m = platform.machine().lower(); print({"amd64": "x86_64", "aarch64": "arm64"}.get(m, m))')"
SECONDS=0  # (every Python step runs from the checkout's root, which is on its import path)

echo "==> the embedded default model"
CLOSEDMESH_BUNDLE_MODEL="$("$PY" -c 'from pathlib import Path; from runtime.models.embedded import ensure_default_model; print(ensure_default_model(Path(".cache/models")))')"
export CLOSEDMESH_BUNDLE_MODEL

unset CLOSEDMESH_LLAMA_VARIANTS CLOSEDMESH_LLAMA_LIB_DIR
if [ "$VARIANTS" = 1 ]; then
    echo "==> the CPU variants of llama.cpp (build/llama-variants)"
    "$PY" scripts/build_llama_variants.py --out build/llama-variants
    export CLOSEDMESH_LLAMA_VARIANTS="$ROOT/build/llama-variants"
    CLOSEDMESH_LLAMA_LIB_DIR="$("$PY" -c 'import platform; from runtime.engine.variants import variant_names; print(variant_names(platform.machine())[-1])')"
    export CLOSEDMESH_LLAMA_LIB_DIR="$CLOSEDMESH_LLAMA_VARIANTS/$CLOSEDMESH_LLAMA_LIB_DIR"
fi

echo "==> the bundle (PyInstaller, build.spec)"
rm -rf dist/closedmesh dist/ClosedMesh.app
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build/pyinstaller build.spec
echo "    bundle: $(du -sh dist/closedmesh | cut -f1) (dist/closedmesh), built in ${SECONDS}s"
[ "$BUNDLE_ONLY" = 1 ] && exit 0

if [ "$OS" = Linux ]; then
    echo "==> dist/ClosedMesh-Linux-$ARCH.tar.gz"
    tar -C dist -czf "dist/ClosedMesh-Linux-$ARCH.tar.gz" closedmesh
    if command -v dpkg-deb >/dev/null; then
        echo "==> dist/ClosedMesh-Linux-$ARCH.deb"
        "$PY" -m installers.linux.deb dist/closedmesh assets/generated "dist/ClosedMesh-Linux-$ARCH.deb" --version "$VERSION" >/dev/null
    else
        echo "    (no dpkg-deb here: no .deb)"
    fi
    ls -l dist/ClosedMesh-Linux-"$ARCH".* | awk '{printf "    %s  %.1f MB\n", $NF, $5 / 1e6}'
fi
echo "==> done in ${SECONDS}s"

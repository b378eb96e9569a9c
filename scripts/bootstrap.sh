#!/usr/bin/env bash
# Creates the project's virtual environment in .venv and installs ClosedMesh into it.
# Safe to run again: it only reinstalls when pyproject.toml (or the requested extras / build flags)
# changed, so a second start takes seconds.
#
#   bash scripts/bootstrap.sh [extras]      e.g. "test"
#
# llama.cpp is built portably, never for "this machine" (GGML_NATIVE=OFF, the CPU's instruction sets
# named explicitly, AMX never: see runtime/portable_build.py for why). The built llama-cpp-python wheel
# is kept in ~/.cache/closedmesh/llama-wheels/<hash of version + flags>, so a new clone on the same
# machine reuses it, and a change of flags (e.g. CMAKE_ARGS="-DGGML_CUDA=on") really rebuilds and
# reinstalls it.
#
# GPU builds of llama.cpp: set CMAKE_ARGS before running, e.g.
#   CMAKE_ARGS="-DGGML_CUDA=on"  (NVIDIA)     CMAKE_ARGS="-DGGML_METAL=on"  (macOS, the default there)
#
# CLOSEDMESH_BOOTSTRAP_PLAN=1 prints what it would do (the llama.cpp flags, the wheel cache folder and
# whether it holds a build, whether an install is needed) and exits without changing anything.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EXTRAS="${1:-}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "ClosedMesh needs Python 3.11 or newer; '$PYTHON' is $("$PYTHON" --version 2>&1 || echo missing)." >&2
    echo "Install Python 3.11+ and run again (or set PYTHON=/path/to/python3.11)." >&2
    exit 1
fi

LLAMA_VERSION="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml | head -n1)"
LLAMA_CMAKE_ARGS="$("$PYTHON" runtime/portable_build.py) ${CMAKE_ARGS:-}"
LLAMA_CMAKE_ARGS="${LLAMA_CMAKE_ARGS% }"

SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[${EXTRAS}]"
fingerprint() { (cat pyproject.toml; echo "extras=$1"; echo "cmake=$LLAMA_CMAKE_ARGS") | sha256sum | cut -d' ' -f1; }
stamp_ok() { [ -f ".venv/.closedmesh-install-$1" ] && [ "$(cat ".venv/.closedmesh-install-$1")" = "$(fingerprint "$1")" ]; }
# An install with the test extras also satisfies a plain install (test ⊇ runtime).
up_to_date() { stamp_ok "${EXTRAS:-runtime}" || { [ -z "$EXTRAS" ] && stamp_ok test; }; }

# The llama-cpp-python wheel cache key: version, Python/platform tag and flags (the venv's Python once
# it exists, the one it will be made from before).
VENV_PY=.venv/bin/python
[ -x "$VENV_PY" ] || VENV_PY="$PYTHON"
PY_TAG="$("$VENV_PY" -c 'import sys, sysconfig; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-{sysconfig.get_platform()}")')"
WHEEL_KEY="$(printf '%s\n' "$LLAMA_VERSION" "$PY_TAG" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-16)"
WHEEL_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/closedmesh/llama-wheels/$WHEEL_KEY"

if [ -n "${CLOSEDMESH_BOOTSTRAP_PLAN:-}" ]; then
    echo "cmake_args=$LLAMA_CMAKE_ARGS"
    echo "wheel_dir=$WHEEL_DIR"
    if ls "$WHEEL_DIR"/llama_cpp_python-*.whl >/dev/null 2>&1; then echo "wheel=cached"; else echo "wheel=build"; fi
    if up_to_date; then echo "install=up-to-date"; else echo "install=needed"; fi
    echo "fingerprint=$(fingerprint "${EXTRAS:-runtime}")"
    exit 0
fi

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi

if up_to_date; then
    exit 0
fi
echo "==> installing ClosedMesh into .venv"
.venv/bin/python -m pip install --quiet --upgrade pip

# 1. llama-cpp-python, built with the portable flags (or taken from our flag-keyed wheel cache).
if ! ls "$WHEEL_DIR"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "==> building llama.cpp (llama-cpp-python $LLAMA_VERSION; about 10 minutes on 2 cores) with:"
    echo "    $LLAMA_CMAKE_ARGS"
    rm -rf "$WHEEL_DIR.tmp" && mkdir -p "$WHEEL_DIR.tmp"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" .venv/bin/python -m pip wheel --quiet --no-deps \
        --no-binary llama-cpp-python -w "$WHEEL_DIR.tmp" "llama-cpp-python==$LLAMA_VERSION"
    printf '%s\n' "$LLAMA_CMAKE_ARGS" > "$WHEEL_DIR.tmp/cmake-args.txt"
    rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
fi
# --force-reinstall: pip would otherwise keep an installed build of the same version ("Requirement already
# satisfied") and a changed CMAKE_ARGS would change nothing.
.venv/bin/python -m pip install --quiet --force-reinstall --no-deps "$WHEEL_DIR"/llama_cpp_python-*.whl
cp "$WHEEL_DIR/cmake-args.txt" .venv/.closedmesh-llama-cmake-args

# 2. ClosedMesh and the rest of its dependencies (llama-cpp-python is satisfied by the wheel above).
.venv/bin/python -m pip install -e "$SPEC"
fingerprint "${EXTRAS:-runtime}" > ".venv/.closedmesh-install-${EXTRAS:-runtime}"

#!/usr/bin/env bash
# Creates the project's virtual environment in .venv and installs ClosedMesh into it.
# Safe to run again: it only reinstalls when pyproject.toml (or the requested extras / build flags)
# changed, so a second start takes seconds. pip's wheel cache keeps the llama-cpp-python build.
#
#   bash scripts/bootstrap.sh [extras]      e.g. "test"
#
# GPU builds of llama.cpp: set CMAKE_ARGS before running, e.g.
#   CMAKE_ARGS="-DGGML_CUDA=on"  (NVIDIA)     CMAKE_ARGS="-DGGML_METAL=on"  (macOS, the default there)
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

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi

SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[${EXTRAS}]"
fingerprint() { (cat pyproject.toml; echo "extras=$1"; echo "cmake=${CMAKE_ARGS:-}") | sha256sum | cut -d' ' -f1; }
stamp_ok() { [ -f ".venv/.closedmesh-install-$1" ] && [ "$(cat ".venv/.closedmesh-install-$1")" = "$(fingerprint "$1")" ]; }

# An install with the test extras also satisfies a plain install (test ⊇ runtime).
if stamp_ok "${EXTRAS:-runtime}" || { [ -z "$EXTRAS" ] && stamp_ok test; }; then
    exit 0
fi
echo "==> installing ClosedMesh into .venv (the first time this builds llama.cpp: about 10 minutes on 2 cores)"
.venv/bin/python -m pip install --quiet --upgrade pip
PIP_FLAGS=()
# pip's wheel cache does not know about CMAKE_ARGS: a GPU build must not reuse a cached CPU wheel.
[ -n "${CMAKE_ARGS:-}" ] && PIP_FLAGS+=(--no-cache-dir)
.venv/bin/python -m pip install "${PIP_FLAGS[@]}" -e "$SPEC"
fingerprint "${EXTRAS:-runtime}" > ".venv/.closedmesh-install-${EXTRAS:-runtime}"

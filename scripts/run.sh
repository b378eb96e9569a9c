#!/usr/bin/env bash
# Runs a ClosedMesh node: installs what it needs (first run only), fetches the embedded default model
# (first run only) and serves the OpenAI API on http://127.0.0.1:9337/v1.
# Extra arguments go to `closedmesh serve`, e.g.  bash scripts/run.sh --port 9444
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/closedmesh" serve "$@"

#!/usr/bin/env bash
# Runs ClosedMesh: installs what it needs (first run only), fetches the embedded default model (first run
# only) and serves the OpenAI API on http://127.0.0.1:9337/v1.
# With a display (macOS, Windows, or DISPLAY / WAYLAND_DISPLAY set) it starts the tray app, which runs
# the node itself; without one (or with CLOSEDMESH_HEADLESS=1) the headless node, `closedmesh serve`.
# Extra arguments go to either, e.g.  bash scripts/run.sh --port 9444
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/python" -m app.launch "$@"

#!/usr/bin/env bash
# Frozen smoke test of what scripts/package.sh built: installs the .deb (apt-get, which is dpkg -i plus
# the declared dependencies), or unpacks the tarball with --tarball, and runs scripts/smoke_frozen.py
# with the system's Python from a temporary folder, with a bare environment: no venv and no source tree
# on any path. It starts a headless node (cold start to /health, a streamed chat completion), a hub and a
# second node (an answer through the mesh), the tray app under Xvfb (screenshot in
# tests/artifacts/frozen-app-window.png, logs beside it), then removes the package with everything still
# running and checks that nothing is left running and the start-at-login entry is gone.
#
#   bash scripts/package.sh && bash scripts/smoke_frozen.sh [--tarball]
#
# Needs root for the .deb (dpkg) and Xvfb (installed with apt-get when missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=deb
[ "${1:-}" = "--tarball" ] && MODE=tarball
ARCH="$(uname -m | sed 's/aarch64/arm64/')"
DEB="$ROOT/dist/ClosedMesh-Linux-$ARCH.deb"
TARBALL="$ROOT/dist/ClosedMesh-Linux-$ARCH.tar.gz"
ARTIFACTS="$ROOT/tests/artifacts"
mkdir -p "$ARTIFACTS"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }
if ! command -v Xvfb >/dev/null; then
    echo "==> installing Xvfb (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q xvfb >/dev/null \
        || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q xvfb >/dev/null; }
fi

WORK="$(mktemp -d /tmp/closedmesh-frozen.XXXXXX)"
cleanup() {
    if [ "$MODE" = deb ] && dpkg -s closedmesh >/dev/null 2>&1; then as_root dpkg -r closedmesh >/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
cp "$ROOT/scripts/smoke_frozen.py" "$WORK/"

if [ "$MODE" = deb ]; then
    [ -f "$DEB" ] || { echo "no $DEB: run scripts/package.sh first" >&2; exit 1; }
    if dpkg -s closedmesh >/dev/null 2>&1; then
        echo "a closedmesh package is installed already; remove it first (dpkg -r closedmesh)" >&2
        trap - EXIT; rm -rf "$WORK"; exit 1
    fi
    echo "==> installing $DEB"
    cp "$DEB" "$WORK/"  # apt reads it from a folder it may enter
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$WORK/$(basename "$DEB")" >"$ARTIFACTS/frozen-install.log" 2>&1 \
        || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$WORK/$(basename "$DEB")" >"$ARTIFACTS/frozen-install.log" 2>&1; } \
        || { tail -20 "$ARTIFACTS/frozen-install.log" >&2; exit 1; }
    BIN=/usr/bin BUNDLE=/opt/closedmesh EXTRA=(--deb closedmesh)
else
    [ -f "$TARBALL" ] || { echo "no $TARBALL: run scripts/package.sh first" >&2; exit 1; }
    # What the .deb would bring: the system libraries of Qt's xcb plugin (the tray app step needs them;
    # without them the app says what to install and runs the headless node, tests/packaging/test_xcb_check.py).
    PACKAGES="$(PYTHONPATH="$ROOT" /usr/bin/python3 -I -c 'import sys; sys.path.insert(0, sys.argv[1]); from installers.linux.deb import DEPENDS; print(" ".join(DEPENDS))' "$ROOT")"
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PACKAGES >"$ARTIFACTS/frozen-install.log" 2>&1 \
        || { tail -20 "$ARTIFACTS/frozen-install.log" >&2; exit 1; }
    tar -C "$WORK" -xzf "$TARBALL"
    BIN="$WORK/closedmesh" BUNDLE="$WORK/closedmesh" EXTRA=()
fi

echo "==> smoke test ($MODE) from $WORK"
cd "$WORK"
set +e
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 /usr/bin/python3 -I smoke_frozen.py --bin "$BIN" \
    --root "$BUNDLE" --artifacts "$ARTIFACTS" --forbid "$ROOT" --forbid "$(readlink -f "$ROOT/.venv" || echo "$ROOT/.venv")" \
    "${EXTRA[@]}"
rc=$?
exit "$rc"

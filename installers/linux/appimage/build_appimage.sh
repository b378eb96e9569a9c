#!/usr/bin/env bash
# Builds dist/ClosedMesh-Linux-<arch>.AppImage from the onedir that scripts/package.sh made.
# Needs appimagetool (https://github.com/AppImage/appimagetool), which is in no Debian package and cannot
# be fetched on the development machine: run by .github/workflows/release.yml, not here.
#
#   bash scripts/package.sh && bash installers/linux/appimage/build_appimage.sh
#
# The AppImage carries the same bundle as the .deb; the Qt xcb libraries come from the system as with
# the tarball (the app's launcher names the packages to install when some are missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
HERE="$ROOT/installers/linux/appimage"
ARCH="$(uname -m)"
APPDIR="$ROOT/build/ClosedMesh.AppDir"
OUT="$ROOT/dist/ClosedMesh-Linux-${ARCH/aarch64/arm64}.AppImage"
[ -x "$ROOT/dist/closedmesh/closedmesh-app" ] || { echo "no dist/closedmesh: run scripts/package.sh first" >&2; exit 1; }
command -v appimagetool >/dev/null || { echo "appimagetool is not on PATH" >&2; exit 1; }

rm -rf "$APPDIR"
mkdir -p "$APPDIR/usr/lib" "$APPDIR/usr/share/applications" "$APPDIR/usr/share/icons/hicolor/256x256/apps"
cp -a "$ROOT/dist/closedmesh" "$APPDIR/usr/lib/closedmesh"
install -m 755 "$HERE/AppRun" "$APPDIR/AppRun"
# The same desktop entry as the .deb, started through AppRun.
PYTHONPATH="$ROOT" "$ROOT/.venv/bin/python" -c 'from installers.linux.deb import DESKTOP_ENTRY; print(DESKTOP_ENTRY.replace("Exec=/usr/bin/closedmesh-app", "Exec=AppRun"), end="")' \
    > "$APPDIR/closedmesh.desktop"
cp "$APPDIR/closedmesh.desktop" "$APPDIR/usr/share/applications/"
cp "$ROOT/assets/generated/closedmesh-256.png" "$APPDIR/closedmesh.png"
cp "$ROOT/assets/generated/closedmesh-256.png" "$APPDIR/usr/share/icons/hicolor/256x256/apps/closedmesh.png"
ln -sf closedmesh.png "$APPDIR/.DirIcon"
ARCH="$ARCH" appimagetool --no-appstream "$APPDIR" "$OUT"
echo "$OUT"

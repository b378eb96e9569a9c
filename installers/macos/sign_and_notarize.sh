#!/usr/bin/env bash
# Signs ClosedMesh.app with a Developer ID, builds the .dmg, notarizes and staples it. macOS only; run
# by .github/workflows/release.yml when the signing secrets exist (without them the .dmg is unsigned and
# users must right-click > Open the first time). Not run on the Linux development machine.
#
#   installers/macos/sign_and_notarize.sh dist/ClosedMesh.app dist/ClosedMesh-macOS-arm64.dmg
#
# Environment:
#   CODESIGN_IDENTITY   "Developer ID Application: Name (TEAMID)", in the login keychain
#   NOTARY_APPLE_ID, NOTARY_TEAM_ID, NOTARY_PASSWORD   an app-specific password for notarytool
set -euo pipefail
APP="$1"
DMG="$2"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENTITLEMENTS="$HERE/entitlements.plist"

if [ -n "${CODESIGN_IDENTITY:-}" ]; then
    # Inside out: every Mach-O file first (libraries, Python extensions, nats-server, the executables),
    # then the bundle. --options runtime is the hardened runtime notarization requires.
    find "$APP/Contents" -type f \( -perm -u+x -o -name "*.dylib" -o -name "*.so" \) -print0 |
        while IFS= read -r -d '' f; do
            if file "$f" | grep -q "Mach-O"; then
                codesign --force --timestamp --options runtime --entitlements "$ENTITLEMENTS" \
                    --sign "$CODESIGN_IDENTITY" "$f"
            fi
        done
    codesign --force --timestamp --options runtime --entitlements "$ENTITLEMENTS" --sign "$CODESIGN_IDENTITY" "$APP"
    codesign --verify --deep --strict --verbose=2 "$APP"
else
    echo "CODESIGN_IDENTITY is not set: the app and the .dmg stay unsigned." >&2
fi

dmgbuild -s "$HERE/dmg_settings.py" -D app="$APP" "ClosedMesh" "$DMG"

if [ -n "${CODESIGN_IDENTITY:-}" ]; then
    codesign --force --timestamp --sign "$CODESIGN_IDENTITY" "$DMG"
    if [ -n "${NOTARY_APPLE_ID:-}" ]; then
        xcrun notarytool submit "$DMG" --apple-id "$NOTARY_APPLE_ID" --team-id "$NOTARY_TEAM_ID" \
            --password "$NOTARY_PASSWORD" --wait
        xcrun stapler staple "$DMG"
        spctl --assess --type open --context context:primary-signature --verbose "$DMG"
    fi
fi
echo "$DMG"

"""dmgbuild settings for ClosedMesh.dmg: the app and a link to /Applications, side by side.

    dmgbuild -s installers/macos/dmg_settings.py -D app=dist/ClosedMesh.app "ClosedMesh" dist/ClosedMesh-macOS-arm64.dmg

Written for macOS (dmgbuild runs there only); run by .github/workflows/release.yml, not on the Linux
development machine. `defines` comes from dmgbuild's -D options.
"""

import os.path

application = defines.get("app", "dist/ClosedMesh.app")  # noqa: F821 (dmgbuild provides `defines`)
appname = os.path.basename(application)

format = "UDZO"  # compressed, read-only
filesystem = "HFS+"
size = None  # computed from the contents
files = [application]
symlinks = {"Applications": "/Applications"}
badge_icon = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "assets", "generated",
                          "closedmesh.icns")
icon_locations = {appname: (140, 160), "Applications": (400, 160)}
window_rect = ((200, 200), (540, 360))
default_view = "icon-view"
show_status_bar = False
show_tab_view = False
show_toolbar = False
show_pathbar = False
show_sidebar = False
icon_size = 96
text_size = 13

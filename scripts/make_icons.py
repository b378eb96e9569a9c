"""Renders every icon file the three OSes need from the one source image, assets/closedmesh.svg:

    assets/generated/closedmesh-<size>.png   16 … 1024 px (Linux hicolor theme, the AppImage, the .deb)
    assets/generated/closedmesh.ico          Windows (the .exe and the installer)
    assets/generated/closedmesh.icns         macOS (the .app bundle and the .dmg)

Run it after changing the SVG (the results are committed):  .venv/bin/python scripts/make_icons.py
It uses Qt's SVG renderer (PySide6 is a dependency already) on the offscreen platform: no display needed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from installers.icons import ICNS_TYPES, ICO_SIZES, icns_bytes, ico_bytes  # noqa: E402

SOURCE = ROOT / "assets" / "closedmesh.svg"
OUT = ROOT / "assets" / "generated"
PNG_SIZES = sorted({16, 22, 24, 32, 48, 64, 128, 256, 512, 1024, *ICO_SIZES, *(s for _, s in ICNS_TYPES)})


def render(svg: Path, sizes: list[int]) -> dict[int, bytes]:
    """PNG bytes of the SVG at each size (antialiased, transparent background)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication([])
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg} is not a valid SVG image")
    out = {}
    for size in sizes:
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        data = QByteArray()
        buf = QBuffer(data)
        buf.open(QIODevice.OpenModeFlag.WriteOnly)
        image.save(buf, "PNG")
        out[size] = bytes(data.data())
    return out


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    pngs = render(SOURCE, PNG_SIZES)
    for size, png in pngs.items():
        (OUT / f"closedmesh-{size}.png").write_bytes(png)
    (OUT / "closedmesh.ico").write_bytes(ico_bytes(pngs))
    (OUT / "closedmesh.icns").write_bytes(icns_bytes(pngs))
    print(f"wrote {len(pngs)} PNGs, closedmesh.ico and closedmesh.icns to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

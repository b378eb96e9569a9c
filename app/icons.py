"""The tray and window icons, drawn with QPainter (crisp at every size, no image files to ship).

The glyph is a small mesh: three nodes joined by links. Its look says the state at a glance:

- starting: grey outlines (nothing is serving yet)
- solo: one filled blue node, the others faint (serving this machine only)
- joined: three green nodes, links drawn (in the mesh)
- serving: joined, the lead node larger and amber (answering requests now)
- error: a red disc with an exclamation mark
"""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QIcon, QPainter, QPen, QPixmap

from .state import TRAY_KINDS, TrayKind

BLUE = QColor("#1a73e8")
GREEN = QColor("#1e8e3e")
AMBER = QColor("#f29900")
RED = QColor("#d93025")
GREY = QColor("#80868b")
FAINT = QColor(128, 134, 139, 110)

SIZES = (16, 22, 24, 32, 48, 64, 128, 256)

# Node centres on a 64-unit canvas: lead node bottom-left, then top, then bottom-right.
_NODES = (QPointF(17, 44), QPointF(32, 17), QPointF(47, 44))
_R = 9.5


def _draw(p: QPainter, kind: TrayKind) -> None:
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    if kind == "error":
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(RED)
        p.drawEllipse(QRectF(6, 6, 52, 52))
        p.setPen(QPen(QColor("white"), 7, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
        p.drawLine(QPointF(32, 17), QPointF(32, 36))
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor("white"))
        p.drawEllipse(QPointF(32, 47), 4.2, 4.2)
        return
    link = {"starting": GREY, "solo": FAINT, "joined": GREEN, "serving": GREEN}[kind]
    p.setPen(QPen(link, 5, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
    a, b, c = _NODES
    p.drawLine(a, b)
    p.drawLine(b, c)
    p.drawLine(c, a)
    for i, centre in enumerate(_NODES):
        r = _R
        if kind == "starting":
            p.setPen(QPen(GREY, 4.5))
            p.setBrush(QColor("white"))
        elif kind == "solo":
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(BLUE if i == 0 else FAINT)
        elif kind == "serving" and i == 0:
            p.setPen(QPen(QColor("white"), 2.5))
            p.setBrush(AMBER)
            r = _R + 3.5
        else:
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(GREEN)
        p.drawEllipse(centre, r, r)


def pixmap(kind: TrayKind, size: int) -> QPixmap:
    pm = QPixmap(size, size)
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.scale(size / 64.0, size / 64.0)
    _draw(p, kind)
    p.end()
    return pm


_cache: dict[str, QIcon] = {}


def icon(kind: TrayKind) -> QIcon:
    if kind not in _cache:
        ic = QIcon()
        for s in SIZES:
            ic.addPixmap(pixmap(kind, s))
        _cache[kind] = ic
    return _cache[kind]


def app_icon() -> QIcon:
    """The application's own icon (windows, dialogs): the joined mesh."""
    return icon("joined")


def legend(size: int = 48) -> QPixmap:
    """Every state's icon at ``size`` and at a tray's 22 px, with its name (the screenshot tests save it)."""
    labels = {"starting": "starting", "solo": "solo", "joined": "joined", "serving": "serving peers", "error": "error"}
    cell = max(size + 40, 120)
    pm = QPixmap(cell * len(TRAY_KINDS), size + 44)
    pm.fill(QColor("white"))
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    f = QFont()
    f.setPointSize(9)
    p.setFont(f)
    p.setPen(QColor("#202124"))
    for i, kind in enumerate(TRAY_KINDS):
        x = i * cell + (cell - size - 30) // 2
        p.drawPixmap(x, 8, pixmap(kind, size))
        p.drawPixmap(x + size + 8, 8 + size - 22, pixmap(kind, 22))
        p.drawText(QRectF(i * cell, size + 14, cell, 24), Qt.AlignmentFlag.AlignHCenter, labels[kind])
    p.end()
    return pm

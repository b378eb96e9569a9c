"""Icon containers for the three OSes, written from PNG images (stdlib only; scripts/make_icons.py renders
the PNGs from assets/closedmesh.svg and calls these).

- Windows ``.ico``: PNG-compressed entries (Windows Vista and later read them), 16 to 256 px.
- macOS ``.icns``: PNG-based entries (macOS 10.7 and later), 16 to 1024 px including the @2x types.
"""

from __future__ import annotations

import struct

ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
# icns type -> pixel size of its PNG (the @2x types hold the doubled size).
ICNS_TYPES: tuple[tuple[bytes, int], ...] = (
    (b"icp4", 16), (b"icp5", 32), (b"icp6", 64), (b"ic07", 128), (b"ic08", 256), (b"ic09", 512),
    (b"ic10", 1024), (b"ic11", 32), (b"ic12", 64), (b"ic13", 256), (b"ic14", 512),
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if not png.startswith(PNG_MAGIC) or png[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    return struct.unpack(">II", png[16:24])


def ico_bytes(pngs: dict[int, bytes]) -> bytes:
    """A .ico with one PNG entry per size in ICO_SIZES (``pngs`` maps size -> PNG bytes)."""
    sizes = [s for s in ICO_SIZES if s in pngs]
    header = struct.pack("<HHH", 0, 1, len(sizes))
    offset = len(header) + 16 * len(sizes)
    entries, data = b"", b""
    for s in sizes:
        if png_size(pngs[s]) != (s, s):
            raise ValueError(f"the {s}px PNG is {png_size(pngs[s])}")
        dim = 0 if s == 256 else s  # 0 means 256 in the directory entry
        entries += struct.pack("<BBBBHHII", dim, dim, 0, 0, 1, 32, len(pngs[s]), offset + len(data))
        data += pngs[s]
    return header + entries + data


def icns_bytes(pngs: dict[int, bytes]) -> bytes:
    """A .icns with every type of ICNS_TYPES (``pngs`` must hold each size they use)."""
    body = b""
    for kind, size in ICNS_TYPES:
        if png_size(pngs[size]) != (size, size):
            raise ValueError(f"the {size}px PNG is {png_size(pngs[size])}")
        body += kind + struct.pack(">I", 8 + len(pngs[size])) + pngs[size]
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def read_ico(data: bytes) -> dict[int, bytes]:
    """The PNG entries of a .ico by size (the inverse of ico_bytes, for tests and checks)."""
    reserved, kind, count = struct.unpack("<HHH", data[:6])
    if (reserved, kind) != (0, 1):
        raise ValueError("not an icon file")
    out = {}
    for i in range(count):
        w, _h, _c, _r, _p, _b, length, offset = struct.unpack("<BBBBHHII", data[6 + 16 * i: 22 + 16 * i])
        out[w or 256] = data[offset: offset + length]
    return out


def read_icns(data: bytes) -> dict[bytes, bytes]:
    """The entries of a .icns by type."""
    if data[:4] != b"icns" or struct.unpack(">I", data[4:8])[0] != len(data):
        raise ValueError("not an icns file")
    out, pos = {}, 8
    while pos < len(data):
        kind, length = data[pos: pos + 4], struct.unpack(">I", data[pos + 4: pos + 8])[0]
        out[kind] = data[pos + 8: pos + length]
        pos += length
    return out

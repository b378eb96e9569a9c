"""File integrity: sha256 of a file, and the '<file>.sha256' marker that records a verification.

The marker holds '<sha256> <size> <mtime_ns>': a file whose size and mtime still match was verified
and is not hashed again (a restart does not re-read gigabytes); any change means hash again.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

HASH_BLOCK = 4 << 20  # bytes read at a time


class HashStopped(Exception):
    """Hashing was interrupted through its stop event."""


def sha256_file(path: Path, stop: threading.Event | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            if stop is not None and stop.is_set():
                raise HashStopped
            h.update(block)
    return h.hexdigest()


def marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def is_verified(path: Path, sha256: str) -> bool:
    """True when ``path`` was verified against ``sha256`` and has not changed since."""
    try:
        st = path.stat()
        return marker_path(path).read_text().strip() == f"{sha256} {st.st_size} {st.st_mtime_ns}"
    except OSError:
        return False


def mark_verified(path: Path, sha256: str) -> None:
    st = path.stat()
    marker_path(path).write_text(f"{sha256} {st.st_size} {st.st_mtime_ns}\n")


def verified_sha256(path: Path) -> str | None:
    """The sha256 recorded in the marker, whether or not the file changed since."""
    try:
        return marker_path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None

"""Which builds of llama.cpp have crashed on this machine, and what a worker's exit code means.

A worker that dies from SIGILL (an instruction this CPU does not execute, or executes only in name: AMX on
VMs that advertise it and trap it) or SIGBUS while it loads a model and runs its first decode has shown
that its build of llama.cpp cannot run here. That is remembered in a small JSON file so the node never
tries that build again — until the build itself changes (a reinstall gives its library another size or
modification time, hence another key).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from ..hardware import installed_llama_lib_dir
from .variants import LibraryVariant

log = logging.getLogger(__name__)

BUILD_FAULT_SIGNALS = (signal.SIGILL, signal.SIGBUS)

_SIGNAL_WORDS = {
    signal.SIGILL: "illegal instruction (SIGILL): this build of llama.cpp uses an instruction this processor "
    "cannot run",
    signal.SIGBUS: "bus error (SIGBUS)",
    signal.SIGSEGV: "segmentation fault (SIGSEGV)",
    signal.SIGABRT: "aborted (SIGABRT): llama.cpp stopped on an internal error",
    signal.SIGKILL: "killed (SIGKILL): by the system (out of memory?) or by a user",
    signal.SIGFPE: "arithmetic fault (SIGFPE)",
    signal.SIGTERM: "terminated (SIGTERM)",
}


def describe_exit(exitcode: int | None) -> str:
    """A worker's exit code in plain words (-N: killed by signal N, as subprocess reports it)."""
    from .worker import EXIT_LOOP_CRASHED

    if exitcode is None:
        return "it stopped answering"
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
        except ValueError:
            return f"killed by signal {-exitcode}"
        return _SIGNAL_WORDS.get(sig, f"killed by {sig.name}")
    if exitcode == EXIT_LOOP_CRASHED:
        return "its generation loop failed (a bug; see the node's log)"
    return f"it exited with code {exitcode}"


def is_build_fault(exitcode: int | None) -> bool:
    return exitcode is not None and exitcode < 0 and -exitcode in BUILD_FAULT_SIGNALS


def build_key(variant: LibraryVariant) -> str:
    """Identifies one build of the libraries: the variant plus its libllama's size and mtime."""
    lib_dir = variant.lib_dir if variant.lib_dir is not None else installed_llama_lib_dir()
    stamp = "?"
    if lib_dir is not None and lib_dir.is_dir():
        libs = sorted(p for p in lib_dir.iterdir() if p.name.startswith(("libllama", "llama.")))
        if libs:
            st = libs[0].stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
    return f"{variant.name}|{stamp}"


class BuildRegistry:
    """The builds that crashed here (JSON file ``path``): {key: {"variant", "reason", "at"}}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def fault(self, variant: LibraryVariant) -> str | None:
        with self._lock:
            entry = self._read().get(build_key(variant))
        return entry.get("reason") if isinstance(entry, dict) else None

    def record_fault(self, variant: LibraryVariant, reason: str) -> None:
        with self._lock:
            data = self._read()
            data[build_key(variant)] = {"variant": variant.name, "reason": reason, "at": time.time()}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
            os.replace(tmp, self.path)

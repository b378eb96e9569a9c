"""The node's CPU threads, shared among its engines that are generating.

Each engine worker is set up with as many decode threads as the machine has cores (``EngineConfig.threads``).
Two workers decoding at the same time would then run twice as many busy threads as there are cores, and
llama.cpp's threads wait for each other at a barrier after every operation of a step: a thread that waits
for a sibling the kernel has set aside keeps a core from it, and the whole step waits out time slices
(measured on 2 cores: two workers at once ran at 0.33-0.35× of one alone with OpenMP's default spin,
0.67-0.72× with the workers' bounded spin, worker.OMP_SPIN_COUNT). So while several of a node's engines have work,
they share the threads instead: with n busy engines each gets ``threads // n`` (at least one; the first
ones get the remainder), and an engine left alone gets them all back. Engines with nothing to do need no
threads and are left out. The change reaches a worker between two decode steps (``llama_set_n_threads``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable


def split(threads: int, n: int) -> list[int]:
    """``threads`` shared by ``n`` engines: as even as possible, the first ones get the remainder, and
    every engine at least one."""
    if n <= 0:
        return []
    base, extra = divmod(threads, n)
    return [max(1, base + (1 if i < extra else 0)) for i in range(n)]


class CoreShare:
    """Which engines are generating, and the threads each was told to use. Thread-safe: engines call it
    from the event loop (a request handed over) and from their reader threads (a request finished)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[Hashable, tuple[int, Callable[[int], None]]] = {}  # in the order they became busy
        self._given: dict[Hashable, int] = {}  # threads each engine's worker runs with now

    def busy(self, key: Hashable, threads: int, apply: Callable[[int], None]) -> None:
        """The engine ``key`` (set up with ``threads``) has work; ``apply(n)`` tells its worker to use n."""
        with self._lock:
            if key in self._busy:
                return
            self._busy[key] = (threads, apply)
            self._rebalance()

    def idle(self, key: Hashable) -> None:
        """The engine ``key`` has nothing left to do: the others share its threads."""
        with self._lock:
            if self._busy.pop(key, None) is not None:
                self._rebalance()

    def forget(self, key: Hashable) -> None:
        """The engine's worker is gone (crashed, restarting, closed): a new one starts with all its threads."""
        with self._lock:
            self._given.pop(key, None)
            if self._busy.pop(key, None) is not None:
                self._rebalance()

    def given(self, key: Hashable) -> int | None:
        """The threads the engine was last told to use; None: those it was set up with."""
        with self._lock:
            return self._given.get(key)

    def _rebalance(self) -> None:
        # Called with the lock held, so that the messages to one worker go out in the order decided.
        if not self._busy:
            return
        total = max(threads for threads, _ in self._busy.values())
        for (key, (threads, apply)), n in zip(self._busy.items(), split(total, len(self._busy)), strict=True):
            n = min(n, threads)
            if self._given.get(key, threads) != n:
                self._given[key] = n
                apply(n)

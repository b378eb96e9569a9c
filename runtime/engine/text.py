"""Pure text helpers for generation: incremental UTF-8 decoding and stop-string matching."""

from __future__ import annotations

import codecs


class IncrementalDecoder:
    """Turns token bytes into text, holding back incomplete UTF-8 sequences across tokens."""

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._dec.decode(data, final=False)

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


class StopMatcher:
    """Finds stop strings in streamed text, also when a stop spans several tokens.

    The output is the text cut before the stop occurrence that ends first (OpenAI stops generation as
    soon as a stop sequence has appeared).

    ``feed`` returns the text that is safe to emit now: anything that could still be the start of a
    stop string is held back until the next piece settles it. The stop string itself is never
    emitted, nor anything after it.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=0)
        self._buf = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self._buf += text
        # The stop occurrence that *ends* first wins (ties: the longer one, which starts earlier). An
        # occurrence becomes visible exactly when its last character arrives, so this rule gives the
        # same output however the text is split into tokens, nested stops ('abc' and 'b') included.
        best: tuple[int, int] | None = None  # (end, start)
        for s in self.stops:
            i = self._buf.find(s)
            if i >= 0 and (best is None or (i + len(s), i) < best):
                best = (i + len(s), i)
        if best is not None:
            out = self._buf[: best[1]]
            self._buf = ""
            self.stopped = True
            return out
        # Hold back the longest suffix that is a prefix of some stop string.
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self._buf)), 0, -1):
                if self._buf.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        cut = len(self._buf) - keep
        out, self._buf = self._buf[:cut], self._buf[cut:]
        return out

    def flush(self) -> str:
        """End of generation without a stop: what was held back is real output."""
        out, self._buf = ("" if self.stopped else self._buf), ""
        return out

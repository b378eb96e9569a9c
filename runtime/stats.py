"""Rolling throughput statistics per model (pure data, no I/O).

Two sources feed the same kind of window (docs/entry.md, "Status catalog"):

- *native*: the serving engine's own timing of each answer it finished (engine.py adds a sample per
  ``DoneEvent``): TTFT from submission to the engine to its first token, tok/s over the tokens after it.
- *measured*: what this node's HTTP clients saw end to end (``AnswerClock``, used by the OpenAI routes for
  local and mesh answers alike): TTFT from the request's arrival to its first token reaching this node,
  tok/s over the tokens after it until the usage-carrying end of the answer.

A window keeps at most ``WINDOW_SAMPLES`` samples and none older than ``WINDOW_SECONDS``: a model that
stopped being used does not report an hour-old speed as current.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field

WINDOW_SAMPLES = 200
WINDOW_SECONDS = 3600.0
MAX_MODELS = 256  # models with a measured window; the least recently used one is dropped beyond this


@dataclass
class RequestSample:
    tokens_per_second: float | None  # decode speed after the first token
    ttft_ms: float  # time from submission to the first token
    at: float = field(default_factory=time.monotonic)  # when the answer ended (monotonic seconds)


@dataclass
class RollingStats:
    """One window. The engine adds samples from its reader thread while the event loop reads summaries:
    both hold the lock (iterating a deque that another thread changes raises)."""

    window: int = WINDOW_SAMPLES
    window_seconds: float = WINDOW_SECONDS
    samples: deque[RequestSample] = field(default_factory=deque)
    total_requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, sample: RequestSample) -> None:
        with self._lock:
            self.samples.append(sample)
            self.total_requests += 1
            while len(self.samples) > self.window:
                self.samples.popleft()

    def _prune(self, now: float) -> None:
        while self.samples and now - self.samples[0].at > self.window_seconds:
            self.samples.popleft()

    def summary(self, now: float | None = None) -> dict:
        """Medians over the samples in the window: ``samples`` of them, at most ``window`` and none older
        than ``window_seconds``. ``total_requests`` counts every sample ever added."""
        with self._lock:
            self._prune(time.monotonic() if now is None else now)
            kept = list(self.samples)
            total = self.total_requests
        tps = [s.tokens_per_second for s in kept if s.tokens_per_second is not None]
        ttft = [s.ttft_ms for s in kept]
        return {
            "tokens_per_second_p50": round(statistics.median(tps), 2) if tps else None,
            "ttft_ms_p50": round(statistics.median(ttft), 2) if ttft else None,
            "samples": len(kept),
            "window": self.window,
            "window_seconds": self.window_seconds,
            "total_requests": total,
        }


@dataclass
class AnswerClock:
    """End-to-end timing of one answer as this node's client sees it. ``token()`` at every piece of text
    that reaches this node (only the first one counts), ``sample()`` at the end of an answer that carried
    usage; an answer that failed or was abandoned never calls it and records nothing."""

    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None

    def token(self, now: float | None = None) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic() if now is None else now

    def sample(self, completion_tokens: int, choices: int = 1, now: float | None = None) -> RequestSample | None:
        """The sample for an answer of ``completion_tokens`` over ``choices`` choices, or None when no
        token arrived (nothing to time). tok/s counts the tokens after each choice's first one over the
        time from the first token to the end: for several choices, the request's aggregate rate."""
        if self.first_token is None or completion_tokens <= 0:
            return None
        end = time.monotonic() if now is None else now
        after_first = completion_tokens - max(1, choices)
        span = end - self.first_token
        tps = after_first / span if after_first > 0 and span > 0 else None
        return RequestSample(tps, (self.first_token - self.started) * 1000.0, end)


@dataclass
class ModelStatsBook:
    """A rolling window per model id (this node's measured figures). Bounded: at most ``max_models``
    windows, the least recently recorded one dropped first."""

    max_models: int = MAX_MODELS
    by_model: dict[str, RollingStats] = field(default_factory=dict)

    def record(self, model_id: str, sample: RequestSample | None) -> None:
        if sample is None:
            return
        stats = self.by_model.pop(model_id, None) or RollingStats()
        stats.add(sample)
        self.by_model[model_id] = stats  # re-inserted last: dict order is recency
        while len(self.by_model) > self.max_models:
            del self.by_model[next(iter(self.by_model))]

    def summaries(self, now: float | None = None) -> dict[str, dict]:
        """Model id → ``RollingStats.summary()``, for the models with at least one sample in the window."""
        now = time.monotonic() if now is None else now
        out = {mid: s.summary(now) for mid, s in self.by_model.items()}
        return {mid: s for mid, s in out.items() if s["samples"]}

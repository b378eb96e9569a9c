"""Rolling throughput statistics per model (pure data, no I/O)."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field


@dataclass
class RequestSample:
    tokens_per_second: float | None  # decode speed after the first token
    ttft_ms: float  # time from submission to the first token


@dataclass
class RollingStats:
    window: int = 200
    samples: deque[RequestSample] = field(default_factory=deque)
    total_requests: int = 0

    def add(self, sample: RequestSample) -> None:
        self.samples.append(sample)
        self.total_requests += 1
        while len(self.samples) > self.window:
            self.samples.popleft()

    def summary(self) -> dict:
        tps = [s.tokens_per_second for s in self.samples if s.tokens_per_second is not None]
        ttft = [s.ttft_ms for s in self.samples]
        return {
            "tokens_per_second_p50": round(statistics.median(tps), 2) if tps else None,
            "ttft_ms_p50": round(statistics.median(ttft), 2) if ttft else None,
            "samples": len(self.samples),
            "window": self.window,
            "total_requests": self.total_requests,
        }

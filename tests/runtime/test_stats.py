"""Rolling throughput statistics (runtime/stats.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.stats import RequestSample, RollingStats


def test_empty_summary():
    assert RollingStats().summary() == {
        "tokens_per_second_p50": None,
        "ttft_ms_p50": None,
        "samples": 0,
        "window": 200,
        "window_seconds": 3600.0,
        "total_requests": 0,
    }


def test_medians_odd_and_even():
    s = RollingStats()
    for tps, ttft in [(10.0, 100.0), (30.0, 300.0), (20.0, 200.0)]:
        s.add(RequestSample(tps, ttft))
    assert s.summary()["tokens_per_second_p50"] == 20.0
    assert s.summary()["ttft_ms_p50"] == 200.0
    s.add(RequestSample(40.0, 1000.0))
    summary = s.summary()
    assert summary["tokens_per_second_p50"] == 25.0
    assert summary["ttft_ms_p50"] == 250.0
    assert summary["samples"] == 4 and summary["total_requests"] == 4


def test_medians_are_rounded_to_two_decimals():
    s = RollingStats()
    s.add(RequestSample(1.23456, 9.87654))
    assert s.summary()["tokens_per_second_p50"] == 1.23
    assert s.summary()["ttft_ms_p50"] == 9.88


def test_samples_without_speed_count_for_ttft_only():
    s = RollingStats()
    s.add(RequestSample(None, 50.0))  # e.g. a one-token answer: no decode speed
    assert s.summary()["tokens_per_second_p50"] is None
    assert s.summary()["ttft_ms_p50"] == 50.0
    s.add(RequestSample(12.0, 70.0))
    s.add(RequestSample(None, 90.0))
    summary = s.summary()
    assert summary["tokens_per_second_p50"] == 12.0
    assert summary["ttft_ms_p50"] == 70.0
    assert summary["samples"] == 3


def test_window_drops_oldest_but_total_keeps_counting():
    s = RollingStats(window=3)
    for i in range(1, 6):  # 1..5; the window keeps 3, 4, 5
        s.add(RequestSample(float(i), float(i * 10)))
    summary = s.summary()
    assert [x.tokens_per_second for x in s.samples] == [3.0, 4.0, 5.0]
    assert summary["samples"] == 3
    assert summary["window"] == 3
    assert summary["total_requests"] == 5
    assert summary["tokens_per_second_p50"] == 4.0
    assert summary["ttft_ms_p50"] == 40.0


def test_instances_do_not_share_samples():
    a, b = RollingStats(), RollingStats()
    a.add(RequestSample(1.0, 1.0))
    assert b.summary()["samples"] == 0


@settings(max_examples=200, deadline=None, database=None)
@given(window=st.integers(1, 20),
       samples=st.lists(st.tuples(st.one_of(st.none(), st.floats(0, 1e4)), st.floats(0, 1e5)), max_size=60))
def test_summary_matches_the_last_window_samples(window, samples):
    s = RollingStats(window=window)
    for tps, ttft in samples:
        s.add(RequestSample(tps, ttft))
    kept = samples[-window:] if samples else []

    def median(xs):
        xs = sorted(xs)
        n = len(xs)
        return None if not n else round(xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2, 2)

    summary = s.summary()
    assert summary["samples"] == len(kept)
    assert summary["total_requests"] == len(samples)
    assert summary["ttft_ms_p50"] == median([t for _, t in kept])
    assert summary["tokens_per_second_p50"] == median([t for t, _ in kept if t is not None])


def test_summaries_while_another_thread_adds():
    """The engine adds samples from its reader thread while the event loop reads summaries: without the
    lock, iterating or pruning the window while it changes raised RuntimeError / IndexError."""
    import sys
    import threading

    s = RollingStats(window=50, window_seconds=0.001)  # every summary prunes, every add trims
    stop = threading.Event()

    def adder():
        while not stop.is_set():
            s.add(RequestSample(1.0, 1.0))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    t = threading.Thread(target=adder)
    t.start()
    try:
        for _ in range(20_000):
            s.summary()
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)
    assert s.total_requests > 0

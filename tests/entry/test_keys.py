"""The entry's pure logic: keys, authentication outcomes, the sliding-window rate limit, leases,
reset-time headers, client addresses behind proxies and the bad-key throttle."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.entry.clients import FailureThrottle, client_address, parse_networks
from runtime.entry.keys import (
    KeyRecord,
    Leases,
    RateWindow,
    authenticate,
    duration_header,
    key_id,
    make_key,
    take_request,
)

NOW = 1_800_000_000.0  # a minute boundary is at a multiple of 60


def test_key_format_and_hash():
    key, rec = make_key("alice", NOW, rpm=10)
    assert key.startswith("cm_") and len(key) == 46
    assert len(base64.urlsafe_b64decode(key[3:] + "=")) == 32
    assert rec.id == hashlib.sha256(key.encode()).hexdigest() == key_id(key)
    assert key not in str(rec.to_json()) and rec.prefix == key[:8]
    assert KeyRecord.from_json(rec.to_json()) == rec
    assert make_key("alice", NOW)[0] != key


@pytest.mark.parametrize("kwargs", [{"rpm": 0}, {"concurrent": -1}, {"tokens_per_day": True}, {"expires_in": 0}])
def test_bad_limits_are_refused(kwargs):
    with pytest.raises(ValueError):
        make_key("x", NOW, **kwargs)


def test_authenticate_outcomes():
    key, rec = make_key("k", NOW, expires_in=60)
    records = {rec.id: rec}
    assert authenticate(f"Bearer {key}", records, NOW) == rec
    assert authenticate(f"bearer   {key}  ", records, NOW) == rec
    assert authenticate(None, records, NOW).code == "missing_api_key"
    assert authenticate(f"Basic {key}", records, NOW).code == "missing_api_key"
    assert authenticate("Bearer sk-abc", records, NOW).code == "invalid_api_key"
    assert authenticate(f"Bearer {key}x", records, NOW).code == "invalid_api_key"
    other, _ = make_key("other", NOW)
    assert authenticate(f"Bearer {other}", records, NOW).code == "invalid_api_key"
    assert authenticate(f"Bearer {key}", records, NOW + 61).code == "expired_api_key"
    revoked = {rec.id: rec.revoked(NOW)}
    assert authenticate(f"Bearer {key}", revoked, NOW).code == "revoked_api_key"
    assert rec.revoked(NOW).revoked(NOW + 5).revoked_at == NOW  # revocation is kept, never moved


def test_rate_limit_within_a_minute():
    w = None
    allowed = 0
    for i in range(10):
        d = take_request(w, 5, NOW + i)
        if d.allowed:
            allowed += 1
            w = d.window
    assert allowed == 5
    d = take_request(w, 5, NOW + 10.5)
    assert not d.allowed and d.remaining == 0
    # The first request (second NOW) stops counting when that second can no longer overlap the last 60 s.
    assert d.reset_seconds == pytest.approx(61 - 10.5, abs=0.01)
    assert not take_request(w, 5, NOW + 60.9).allowed
    assert take_request(w, 5, NOW + 61.0).allowed


def test_rate_limit_holds_across_a_minute_boundary():
    """A burst that straddles a minute boundary is not let through twice, nor one at a minute's end."""
    w = None
    accepted = []
    for i in range(400):
        t = NOW + 59 + i * 0.1  # 40 s from the last second of a minute on
        d = take_request(w, 5, t)
        if d.allowed:
            accepted.append(t)
            w = d.window
    assert len(accepted) == 5


def _accept(times: list[float], limit: int) -> list[float]:
    w, accepted = None, []
    for t in times:
        d = take_request(w, limit, t)
        if d.allowed:
            accepted.append(t)
            w = RateWindow.from_json(d.window.to_json())  # as stored in the bucket
        else:
            assert d.reset_seconds > 0 and d.remaining == 0
    return accepted


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.floats(0, 30, allow_nan=False), min_size=1, max_size=300),
    limit=st.integers(1, 20),
)
def test_never_more_than_the_limit_in_any_60_seconds(gaps, limit):
    times, t = [], NOW
    for g in gaps:
        t += g
        times.append(t)
    accepted = _accept(times, limit)
    for i, t0 in enumerate(accepted):
        assert sum(1 for t in accepted[i:] if t < t0 + 60) <= limit


def test_a_steady_client_gets_its_limit_every_minute():
    """The bound costs at most a second: a client asking ten times a second gets R per 61 s."""
    accepted = _accept([NOW + i * 0.1 for i in range(6100)], 60)  # 610 s
    assert 590 <= len(accepted) <= 610, len(accepted)


def test_rate_window_bounded_and_stored():
    w = None
    for i in range(500):
        d = take_request(w, 10_000, NOW + i * 0.5)
        w = d.window
    assert w is not None and len(w.seconds) <= 61 and w.total <= 122
    assert RateWindow.from_json(w.to_json()) == w
    # A record in the earlier per-minute form still counts, conservatively.
    old = RateWindow.from_json({"m": int(NOW // 60), "c": 3, "p": 2})
    assert old.total == 5 and not take_request(old, 5, NOW + 30).allowed


def test_leases_expire():
    ls = Leases({"a": NOW + 1, "b": NOW - 1})
    assert set(ls.live(NOW).held) == {"a"}
    assert Leases.from_json(ls.to_json()) == ls


@pytest.mark.parametrize(
    "seconds,text", [(0.02, "20ms"), (0.9999, "1000ms"), (1, "1s"), (59.2, "1m0s"), (360, "6m0s"), (3723, "1h2m3s")]
)
def test_duration_header(seconds, text):
    assert duration_header(seconds) == text


def test_client_address_trusts_only_configured_proxies():
    proxies = parse_networks(["127.0.0.1", "10.0.0.0/8"])
    assert client_address("198.51.100.1", "1.2.3.4", proxies) == "198.51.100.1"  # not a proxy: header ignored
    assert client_address("127.0.0.1", "1.2.3.4", proxies) == "1.2.3.4"
    # The client's own claim (left) is not believed past the first untrusted hop.
    assert client_address("127.0.0.1", "6.6.6.6, 1.2.3.4, 10.1.1.1", proxies) == "1.2.3.4"
    assert client_address("127.0.0.1", None, proxies) == "127.0.0.1"
    assert client_address("127.0.0.1", "10.0.0.5", proxies) == "10.0.0.5"
    with pytest.raises(ValueError, match="not an IP"):
        parse_networks(["proxy.example"])


def test_failure_throttle():
    t = FailureThrottle(per_minute=60, burst=3, max_clients=2)
    assert [t.allow("a", NOW) for _ in range(4)] == [True, True, True, False]
    assert t.allow("b", NOW) and t.retry_after("a") >= 1
    assert t.allow("a", NOW + 1.01)  # refilled at one a second
    t.allow("c", NOW)
    assert len(t._buckets) == 2  # bounded

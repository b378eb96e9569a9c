"""The HTTP layer's own answers (runtime/server.py) and the descriptor-pressure log (runtime/api/pressure.py),
as plain functions. The end-to-end behaviour is in tests/e2e/test_hostile_requests.py."""

from __future__ import annotations

import errno
import json
import logging

import pytest
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, BadStatusLine, LineTooLong

from runtime.errors import APIError
from runtime.api.pressure import FdPressureLog, is_fd_exhaustion
from runtime.server import _raw_response, parser_error


@pytest.mark.parametrize("exc, status, code", [
    (LineTooLong(b"X-Big: aaaa", 8190), 431, "header_too_large"),
    (BadHttpMessage("Too many headers received"), 431, "too_many_headers"),
    (BadHttpMessage("Missing 'Host' header in request."), 400, "missing_host"),
    (BadHttpMethod("\x16\x03\x01"), 400, "bad_http_request"),
    (BadStatusLine("GARBAGE"), 400, "bad_http_request"),
    (BadHttpMessage("Content-Length can't be present with Transfer-Encoding"), 400, "bad_http_request"),
])
def test_parser_errors_map_to_statuses_and_codes(exc, status, code):
    err = parser_error(400, exc, 8190)
    assert (err.status, err.code, err.type) == (status, code, "invalid_request_error")
    assert err.message and "Traceback" not in err.message


def test_https_on_the_http_port_says_so():
    assert "http://" in parser_error(400, BadHttpMethod("\x16\x03\x01"), 8190).message


def test_server_side_failures_are_server_errors():
    assert parser_error(500, RuntimeError("boom"), 8190).code == "internal_error"
    assert "boom" not in parser_error(500, RuntimeError("boom"), 8190).message
    assert parser_error(504, None, 8190).code == "timeout"


def test_raw_response_is_a_complete_closing_http_response():
    raw = _raw_response(APIError(503, "busy", "server_error", None, "overloaded", retry_after=1))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Connection"] == "close" and headers["Retry-After"] == "1"
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body) == {"error": {"message": "busy", "type": "server_error", "param": None,
                                          "code": "overloaded"}}


def test_fd_exhaustion_is_recognised():
    assert is_fd_exhaustion(OSError(errno.EMFILE, "Too many open files"))
    assert is_fd_exhaustion(OSError(errno.ENFILE, "File table overflow"))
    assert not is_fd_exhaustion(OSError(errno.ECONNRESET, "reset"))
    assert not is_fd_exhaustion(ValueError("x"))
    assert not is_fd_exhaustion(None)


def test_fd_pressure_is_logged_once_per_interval_with_a_count(caplog):
    now = [100.0]
    p = FdPressureLog(interval=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="runtime.server"):
        assert p.record("accept failed") is True
        assert [p.record("accept failed") for _ in range(10_000)] == [False] * 10_000
        now[0] += 59
        assert p.record("accept failed") is False
        now[0] += 2
        assert p.record("accept failed") is True
    assert len(caplog.records) == 2
    assert "10001 more since the last warning" in caplog.records[1].getMessage()
    assert p.total == 10_003

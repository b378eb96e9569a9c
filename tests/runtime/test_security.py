"""Host and Origin checks (runtime/api/security.py); secret files kept private (runtime/config.py)."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from runtime.api.security import host_allowed, origin_allowed
from runtime.config import Paths, admin_token, node_id, read_secret_file

# -- host_allowed -----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", [
    "localhost", "localhost:8080", "LOCALHOST:8080", " localhost:1 ",
    "127.0.0.1", "127.0.0.1:11434",
    "[::1]", "[::1]:8080", "::1",
    "app.localhost", "app.localhost:3000",
])
def test_loopback_names_allowed(host):
    assert host_allowed(host, ())


@pytest.mark.parametrize("host", [
    "192.168.1.20", "192.168.1.20:8080", "10.0.0.7:80", "0.0.0.0:5000", "8.8.8.8",
    "[fe80::1]:8080", "[2001:db8::5]", "2001:db8::5",
])
def test_ip_literals_allowed(host):
    assert host_allowed(host, ())


@pytest.mark.parametrize("host", [None, ""])
def test_missing_host_header_allowed(host):
    assert host_allowed(host, ())


@pytest.mark.parametrize("host", [
    "evil.com", "evil.com:8080", "localhost.evil.com", "127.0.0.1.nip.io", "127.0.0.1.nip.io:80",
    "mybox", "mybox.lan:8080", "localhostx", "notlocalhost:80", "attacker.example:11434",
])
def test_foreign_names_refused(host):
    assert not host_allowed(host, ())


def test_user_allowed_names_accepted_case_insensitively_with_or_without_port():
    extra = ("MyBox.lan", "gpu-server")
    assert host_allowed("mybox.lan", extra)
    assert host_allowed("MYBOX.LAN:8080", extra)
    assert host_allowed("gpu-server:11434", extra)
    assert not host_allowed("other.lan", extra)
    assert not host_allowed("sub.mybox.lan", extra)


# -- origin_allowed ---------------------------------------------------------------------------------


def test_no_origin_allowed():
    assert origin_allowed(None, None, ())
    assert origin_allowed(None, "localhost:8080", ())


@pytest.mark.parametrize("origin", [
    "http://localhost", "http://localhost:3000", "https://localhost:8443", "http://LOCALHOST:3000",
    "http://127.0.0.1", "http://127.0.0.1:5173",
    "http://[::1]", "http://[::1]:8080",
])
def test_loopback_origins_allowed(origin):
    assert origin_allowed(origin, "127.0.0.1:11434", ())


@pytest.mark.parametrize("origin", [
    "https://evil.com", "http://evil.com:8080", "http://localhost.evil.com", "http://127.0.0.1.nip.io",
    "http://localhost@evil.com", "http://192.168.1.9:8080", "null", "file://", "chrome-extension://abcdef",
    "ftp://localhost", "", "localhost:3000",
])
def test_foreign_origins_refused(origin):
    assert not origin_allowed(origin, "127.0.0.1:11434", ())


def test_own_host_allowed():
    assert origin_allowed("http://192.168.1.9:8080", "192.168.1.9:8080", ())
    assert origin_allowed("http://MyBox.lan:8080", "mybox.lan:8080", ())
    assert origin_allowed("https://mybox.lan", "mybox.lan", ())
    # Same name, other port: another origin.
    assert not origin_allowed("http://192.168.1.9:9999", "192.168.1.9:8080", ())
    assert not origin_allowed("http://mybox.lan:8080", None, ())
    assert not origin_allowed("http://mybox.lan:8080", "", ())


def test_extra_origins_allowed():
    extra = ("https://app.example.com", "http://tools.lan:3000")
    assert origin_allowed("https://app.example.com", None, extra)
    assert origin_allowed("http://tools.lan:3000", None, extra)
    assert not origin_allowed("https://other.example.com", None, extra)
    assert not origin_allowed("http://tools.lan:3001", None, extra)


def test_wildcard_extra_allows_any_origin():
    assert origin_allowed("https://evil.com", None, ("*",))
    assert origin_allowed("null", None, ("*",))


# -- secret files (runtime/config.py) -----------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660, 0o666, 0o777])
def test_loose_secret_file_is_fixed_with_a_warning(tmp_path, caplog, loose):
    path = tmp_path / "admin-token"
    path.write_text("tok\n")
    os.chmod(path, loose)
    with caplog.at_level(logging.WARNING, logger="runtime.config"):
        assert read_secret_file(path) == "tok"
    # group/other bits gone; the owner keeps read and write
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"{path} was readable or writable by other users (mode {loose:03o})" in caplog.text


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_tight_secret_file_is_read_silently(tmp_path, caplog):
    path = tmp_path / "admin-token"
    path.write_text("tok\n")
    os.chmod(path, 0o600)
    with caplog.at_level(logging.WARNING, logger="runtime.config"):
        assert read_secret_file(path) == "tok"
    assert caplog.text == ""
    assert read_secret_file(tmp_path / "missing") is None


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_admin_token_and_node_id_are_created_0600_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOSEDMESH_HOME", str(tmp_path))
    paths = Paths.resolve()
    token = admin_token(paths)
    assert stat.S_IMODE((paths.config / "admin-token").stat().st_mode) == 0o600
    os.chmod(paths.config / "admin-token", 0o644)
    assert admin_token(paths) == token  # the same secret, now private
    assert stat.S_IMODE((paths.config / "admin-token").stat().st_mode) == 0o600
    node_id(paths)
    assert stat.S_IMODE((paths.config / "node-id").stat().st_mode) == 0o600

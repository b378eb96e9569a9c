"""The app's settings file."""

from __future__ import annotations

import json
import stat

import pytest

from app.settings import AppSettings, SettingsStore


def test_defaults_when_there_is_no_file(tmp_path):
    s = SettingsStore(tmp_path).load()
    assert s == AppSettings()
    assert (s.port, s.welcome_shown, s.mesh_invite, s.mesh_name) == (9337, False, "", "")
    assert s.join_body() is None  # no mesh chosen yet


def test_round_trip_and_owner_only_file(tmp_path):
    store = SettingsStore(tmp_path / "config")
    s = AppSettings(port=9444, welcome_shown=True, mesh_invite=" nats://hub.example:4222 ", mesh_name=" box ")
    store.save(s)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600  # an invite may grant access to a private mesh
    back = store.load()
    assert back == s
    assert back.join_body() == {"invite": "nats://hub.example:4222", "name": "box"}
    assert not list((tmp_path / "config").glob("*.tmp"))


def test_a_used_invite_is_forgotten_but_a_mesh_url_is_kept():
    s = AppSettings(mesh_invite=" cmi1.abc.sig ", mesh_name="box")
    assert not s.forget_spent_invite("cmi1.other.sig") and s.mesh_invite == " cmi1.abc.sig "  # another one
    assert s.forget_spent_invite("cmi1.abc.sig") and s.mesh_invite == ""
    assert s.join_body() is None
    s = AppSettings(mesh_invite="nats://open.example:4222")
    assert not s.forget_spent_invite("nats://open.example:4222")  # an open mesh's address stays usable
    assert s.join_body() == {"invite": "nats://open.example:4222"}


def test_wrong_types_and_unknown_fields_are_ignored(tmp_path):
    store = SettingsStore(tmp_path)
    store.path.write_text(json.dumps({"port": "9444", "welcome_shown": 1, "mesh_invite": 5, "mesh_name": "box",
                                      "from_a_newer_app": True, "mesh_joined": True}))
    s = store.load()
    assert (s.port, s.welcome_shown, s.mesh_invite, s.mesh_name) == (9337, False, "", "box")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_damaged_file_is_kept_aside_and_the_defaults_used(tmp_path, text):
    store = SettingsStore(tmp_path)
    store.path.write_text(text)
    assert store.load() == AppSettings()
    assert (tmp_path / "app-settings.json.damaged").read_text() == text
    assert not store.path.exists()

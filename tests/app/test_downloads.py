"""The Models tab downloading a GGUF from a local stand-in for Hugging Face (tests/runtime/hf_server.py)
through the real node: progress bar with size, rate and time left, then load, unload, delete; and a
download cancelled from the tab."""

from __future__ import annotations

import re

import pytest

from tests.runtime.hf_server import running_hub

from .conftest import wait_ready

REPO_ID = "test-org/Smol-GGUF"
FILE = "smol-test.gguf"
MODEL = "smol-test"


@pytest.fixture(scope="module")
def hub(model_path):
    """The fake Hub serving the real GGUF under another name, on its own event loop thread."""
    with running_hub([(REPO_ID, FILE, model_path)]) as h:
        yield h


@pytest.fixture
def app_with_hub(qtbot, home, hub, start_app, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.base_url)
    hub.knobs.rate_bps = None
    hub.knobs.stall_after = None
    c = start_app()
    wait_ready(qtbot, c)
    page = c.window.models
    qtbot.waitUntil(lambda: page.listing is not None, timeout=30_000)
    c.window.close_welcome()
    c.window.show_tab("models")
    yield c
    hub.knobs.rate_bps = None
    hub.release_stall()


def row(page, mid):
    return next((r for r in page.rows if r.id == mid), None)


def test_download_with_progress_then_load_unload_delete(qtbot, app_with_hub, hub, home, shot):
    c = app_with_hub
    page = c.window.models
    hub.knobs.rate_bps = 24_000_000  # about 4 s for the 98 MB file: progress is seen mid-transfer
    page.ref.setText(f"{REPO_ID}/{FILE}")
    page.pull_typed.click()
    qtbot.waitUntil(lambda: (r := row(page, MODEL)) is not None and r.progress is not None and 0.15 < r.progress < 0.85,
                    timeout=60_000)
    cell = page._status_cells[MODEL]
    assert cell.bar.isVisible() and 150 <= cell.bar.value() <= 850
    assert re.fullmatch(r"[\d.]+ MB of [\d.]+ MB · [\d.]+ MB/s · .* left", cell.text.text()), cell.text.text()
    assert page.button(MODEL, "cancel") is not None
    assert page.ref.text() == ""  # accepted: the field is cleared
    shot(c.window, "window-models-downloading")
    qtbot.waitUntil(lambda: (r := row(page, MODEL)) is not None and r.state == "on_disk", timeout=120_000)
    assert (home / "data" / "models" / FILE).is_file()
    qtbot.waitUntil(lambda: page.button(MODEL, "load") is not None, timeout=10_000)
    page.button(MODEL, "load").click()
    qtbot.waitUntil(lambda: row(page, MODEL).state == "ready", timeout=60_000)
    qtbot.waitUntil(lambda: page.button(MODEL, "unload") is not None, timeout=10_000)
    # the tray's Models submenu lists it too
    qtbot.waitUntil(lambda: MODEL in [a.text() for a in c.tray.models_menu.actions()], timeout=10_000)
    page.button(MODEL, "unload").click()
    qtbot.waitUntil(lambda: row(page, MODEL).state == "on_disk", timeout=60_000)
    qtbot.waitUntil(lambda: page.button(MODEL, "delete") is not None, timeout=10_000)
    page.button(MODEL, "delete").click()
    qtbot.waitUntil(lambda: row(page, MODEL) is None, timeout=30_000)
    assert not (home / "data" / "models" / FILE).exists()


def test_cancel_a_download_from_the_tab(qtbot, app_with_hub, hub, home):
    c = app_with_hub
    page = c.window.models
    hub.knobs.stall_after = 20_000_000  # holds the transfer at 20 MB until released
    page.ref.setText(f"{REPO_ID}/{FILE}")
    page.pull_typed.click()
    qtbot.waitUntil(lambda: (r := row(page, MODEL)) is not None and r.progress is not None and r.progress > 0.1,
                    timeout=60_000)
    qtbot.waitUntil(lambda: page.button(MODEL, "cancel") is not None, timeout=10_000)
    page.button(MODEL, "cancel").click()
    qtbot.waitUntil(lambda: row(page, MODEL) is None or row(page, MODEL).state == "available", timeout=30_000)
    assert not (home / "data" / "models" / FILE).exists()
    assert not list((home / "cache").rglob("*.partial"))  # a cancelled download leaves nothing behind


def test_a_bad_reference_is_said_plainly(qtbot, app_with_hub):
    page = app_with_hub.window.models
    page.ref.setText("qwen3-9b")
    page.pull_typed.click()
    qtbot.waitUntil(lambda: "qwen3-9b" in page.banner.text().lower(), timeout=10_000)
    assert page.ref.text() == "qwen3-9b"  # kept, to fix the typo
    page.ref.setText("")
    page.pull_typed.click()
    assert page.banner.text().startswith("Type a Hugging Face")

"""The model downloader against a local Hugging Face look-alike (tests/runtime/hf_server.py).

The clean pull and the resume tests move the real default GGUF (~98 MB); the others use small
synthetic files. Nothing waits on timing luck: tests wait for conditions (bytes on disk, progress
states) with generous bounds, and the server stalls or cuts at exact byte offsets.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from runtime.models import hf
from runtime.models.download import (
    AccessDenied,
    ChecksumMismatch,
    DiskFullError,
    DownloadCancelled,
    DownloadError,
    DownloadJob,
    DownloadProgress,
    Downloader,
    RemoteFileMismatch,
    RemoteNotFound,
)
from runtime.models.embedded import FILENAME as GGUF_NAME, SHA256 as GGUF_SHA256
from tests.conftest import MODEL_CACHE

from .hf_server import FakeHub

REPO = "bartowski/SmolLM2-135M-Instruct-GGUF"
MB = 1_000_000


def synthetic(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def wait_until(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def gguf() -> Path:
    """The real default model, fetched once per machine (see tests/conftest.py)."""
    from runtime.models.embedded import ensure_default_model

    return ensure_default_model(MODEL_CACHE)


@pytest.fixture
async def hub():
    server = FakeHub()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def dirs(tmp_path) -> tuple[Path, Path]:
    return tmp_path / "data" / "models", tmp_path / "cache" / "partial"


_downloaders: list[Downloader] = []


@pytest.fixture(autouse=True)
async def _stop_downloaders_left_running():
    """A failed test must not leave a transfer running into the next one."""
    yield
    while _downloaders:
        await _downloaders.pop().close()


def make(dirs, events: list | None = None, **kw) -> Downloader:
    kw.setdefault("backoff", 0.01)
    d = Downloader(dirs[0], dirs[1], on_progress=events.append if events is not None else None, **kw)
    _downloaders.append(d)
    return d


def job_for(hub: FakeHub, filename: str, model_id: str | None = None, **kw) -> DownloadJob:
    repo = next(r for (r, f) in hub.files if f == filename)
    return DownloadJob(id=model_id or filename, url=hub.url(repo, filename), filename=filename, **kw)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# -- the real GGUF ------------------------------------------------------------------------------------

async def test_clean_pull_of_the_real_gguf_is_verified_and_installed(hub, dirs, gguf):
    hub.add(REPO, GGUF_NAME, gguf)
    events: list[DownloadProgress] = []
    d = make(dirs, events)
    path = await d.pull(job_for(hub, GGUF_NAME, "SmolLM2-135M-Instruct"))

    assert path == dirs[0] / GGUF_NAME
    assert hashlib.sha256(path.read_bytes()).hexdigest() == GGUF_SHA256
    # The sha256 came from X-Linked-Etag (the job named none) and is recorded in the marker.
    size = path.stat().st_size
    assert (dirs[0] / (GGUF_NAME + ".sha256")).read_text().split()[:2] == [GGUF_SHA256, str(size)]
    assert listing(dirs[1]) == []  # no partial or sidecar left behind
    assert [r.method for r in hub.requests if r.path.startswith("/cdn/")] == ["HEAD", "GET"]
    assert hub.bytes_sent() == size
    assert events[0].state == "queued" and events[-1].state == "done"
    assert events[-1].path == path and events[-1].done_bytes == events[-1].total_bytes == size
    assert d.progress("SmolLM2-135M-Instruct").state == "done"

    # Pulling again finds the verified file: no transfer.
    sent = hub.bytes_sent()
    assert await d.pull(job_for(hub, GGUF_NAME, "SmolLM2-135M-Instruct")) == path
    assert hub.bytes_sent() == sent


async def test_a_cut_connection_resumes_with_a_range_request(hub, dirs, gguf):
    served = hub.add(REPO, GGUF_NAME, gguf)
    hub.knobs.cut_after = 30 * MB
    path = await make(dirs).pull(job_for(hub, GGUF_NAME, expected_sha256=GGUF_SHA256))

    assert hashlib.sha256(path.read_bytes()).hexdigest() == GGUF_SHA256
    first, second = hub.cdn_gets()
    assert first.sent == 30 * MB and "Range" not in first.headers
    resumed_from = int(second.headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= 30 * MB
    assert second.status == 206 and second.sent == served.size - resumed_from  # not all again


async def test_a_new_downloader_resumes_the_partial_left_by_a_stopped_one(hub, dirs, gguf):
    served = hub.add(REPO, GGUF_NAME, gguf)
    hub.knobs.stall_after = 40 * MB
    first = make(dirs)
    pulling = asyncio.create_task(first.pull(job_for(hub, GGUF_NAME, "smol")))
    await wait_until(lambda: (p := first.progress("smol")) and p.done_bytes == 40 * MB, what="40 MB on disk")
    await first.close()  # the node shuts down mid-download
    with pytest.raises(DownloadCancelled) as stopped:
        await pulling
    assert stopped.value.kept_partial and "resumes" in str(stopped.value)
    partial = dirs[1] / (GGUF_NAME + ".partial")
    assert partial.stat().st_size == 40 * MB
    assert json.loads((dirs[1] / (GGUF_NAME + ".partial.json")).read_text())["sha256"] == GGUF_SHA256
    assert first.progress("smol").state == "cancelled"
    assert listing(dirs[0]) == []

    hub.release_stall()
    second = make(dirs)  # a new process, in effect: nothing shared but the folders
    path = await second.pull(job_for(hub, GGUF_NAME, "smol"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == GGUF_SHA256
    resumed = hub.cdn_gets()[-1]
    assert resumed.headers["Range"] == f"bytes={40 * MB}-"
    assert resumed.status == 206 and resumed.sent == served.size - 40 * MB
    assert not partial.exists()


# -- integrity ----------------------------------------------------------------------------------------

async def test_a_corrupted_byte_is_caught_and_quarantined(hub, dirs):
    data = synthetic(3 * MB)
    hub.add("o/r", "model.gguf", data)
    hub.knobs.corrupt_offset = 1_234_567
    events: list[DownloadProgress] = []
    with pytest.raises(ChecksumMismatch) as caught:
        await make(dirs, events).pull(job_for(hub, "model.gguf"))

    message = str(caught.value)
    assert "corrupt" in message and sha256(data) in message and "quarantine" in message
    assert listing(dirs[0]) == ["quarantine", f"quarantine/{caught.value.quarantined.name}"]
    assert caught.value.quarantined.stat().st_size == len(data)
    assert listing(dirs[1]) == []
    assert events[-1].state == "error" and events[-1].error == message
    assert "verifying" in [e.state for e in events]


async def test_the_job_checksum_wins_and_a_different_remote_file_is_refused_before_transfer(hub, dirs):
    hub.add("o/r", "model.gguf", synthetic(MB))
    with pytest.raises(RemoteFileMismatch, match="different model.gguf than expected"):
        await make(dirs).pull(job_for(hub, "model.gguf", expected_sha256="ab" * 32))
    assert hub.cdn_gets() == [] and listing(dirs[0]) == []


async def test_a_server_that_ignores_range_restarts_cleanly(hub, dirs):
    data = synthetic(4 * MB, seed=1)
    hub.add("o/r", "model.gguf", data)
    hub.knobs.cut_after = MB
    hub.knobs.ignore_range = True
    path = await make(dirs).pull(job_for(hub, "model.gguf"))

    assert path.read_bytes() == data
    first, second = hub.cdn_gets()
    assert "Range" in second.headers and second.status == 200 and second.sent == len(data)


async def test_a_remote_file_that_changed_since_the_partial_starts_over(hub, dirs):
    old, new = synthetic(3 * MB, seed=2), synthetic(3 * MB, seed=3)
    hub.add("o/r", "model.gguf", old)
    hub.knobs.stall_after = MB
    first = make(dirs)
    pulling = asyncio.create_task(first.pull(job_for(hub, "model.gguf")))
    await wait_until(lambda: (p := first.progress("model.gguf")) and p.done_bytes == MB, what="1 MB on disk")
    await first.close()
    with pytest.raises(DownloadCancelled):
        await pulling

    hub.release_stall()
    hub.add("o/r", "model.gguf", new)  # updated upstream meanwhile
    path = await make(dirs).pull(job_for(hub, "model.gguf"))
    assert path.read_bytes() == new
    assert "Range" not in hub.cdn_gets()[-1].headers


@pytest.mark.parametrize("extra", [0, 10], ids=["complete-partial", "partial-longer-than-remote"])
async def test_a_416_finishes_a_complete_partial_or_starts_over(hub, dirs, extra):
    """A node that stopped after the last byte but before verifying, on a server that gives no size:
    the Range request past the end gets 416, and the partial is used when it is exactly the file."""
    data = synthetic(2 * MB, seed=17)
    served = hub.add("o/r", "model.gguf", data)
    hub.knobs.send_sizes = False
    job = job_for(hub, "model.gguf")
    dirs[1].mkdir(parents=True)
    (dirs[1] / "model.gguf.partial").write_bytes(data + synthetic(extra, seed=18))
    (dirs[1] / "model.gguf.partial.json").write_text(json.dumps(
        {"id": job.id, "url": job.url, "sha256": served.sha256, "size": None, "etag": served.sha256}))

    path = await make(dirs).pull(job)
    assert path.read_bytes() == data
    gets = hub.cdn_gets()
    assert gets[0].headers["Range"] == f"bytes={len(data) + extra}-" and gets[0].status == 416
    if extra:
        assert "Range" not in gets[1].headers and gets[1].sent == len(data)
    else:
        assert len(gets) == 1


async def test_transient_server_errors_are_retried(hub, dirs):
    data = synthetic(MB, seed=4)
    hub.add("o/r", "model.gguf", data)
    hub.knobs.fail_statuses = [503, 500]
    path = await make(dirs).pull(job_for(hub, "model.gguf"))
    assert path.read_bytes() == data
    assert [r.status for r in hub.cdn_gets()] == [503, 500, 200]


async def test_retries_run_out_with_a_clear_message_and_the_partial_kept(hub, dirs):
    hub.add("o/r", "model.gguf", synthetic(2 * MB, seed=5))
    hub.knobs.fail_statuses = [503] * 10
    with pytest.raises(DownloadError, match=r"after 3 tries: .*HTTP 503") as caught:
        await make(dirs, max_retries=2).pull(job_for(hub, "model.gguf"))
    assert type(caught.value) is DownloadError
    assert len(hub.cdn_gets()) == 3


# -- access -------------------------------------------------------------------------------------------

async def test_a_gated_file_needs_the_hugging_face_token(hub, dirs):
    data = synthetic(MB, seed=6)
    hub.add("meta-llama/Gated", "model.gguf", data)
    hub.knobs.token = "hf_secret"
    hub.knobs.cdn_host = "localhost"  # the CDN is another origin, as on huggingface.co

    with pytest.raises(AccessDenied) as denied:
        await make(dirs).pull(job_for(hub, "model.gguf"))
    assert "Hugging Face token" in str(denied.value) and "401" in str(denied.value)
    assert len(hub.requests) == 1  # no retries

    with pytest.raises(AccessDenied, match="refused with your Hugging Face token.*403"):
        await make(dirs).pull(job_for(hub, "model.gguf", headers=hf.auth_headers("hf_wrong")))

    path = await make(dirs).pull(job_for(hub, "model.gguf", headers=hf.auth_headers("hf_secret")))
    assert path.read_bytes() == data
    resolve = [r for r in hub.requests if "/resolve/" in r.path]
    assert resolve[-1].headers["Authorization"] == "Bearer hf_secret"
    assert all("Authorization" not in r.headers for r in hub.requests if r.path.startswith("/cdn/"))


async def test_a_missing_file_is_a_clear_error_without_retries(hub, dirs):
    hub.add("o/r", "model.gguf", b"x")
    job = DownloadJob(id="nope", url=hub.url("o/r", "missing.gguf"), filename="missing.gguf")
    with pytest.raises(RemoteNotFound, match="missing.gguf was not found.*404"):
        await make(dirs).pull(job)
    assert len(hub.requests) == 1


async def test_hf_endpoint_is_honoured(hub, dirs, monkeypatch):
    data = synthetic(MB, seed=7)
    hub.add("o/r", "model.gguf", data)
    monkeypatch.setenv("HF_ENDPOINT", hub.base_url + "/")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    job = hf.download_job("o-r", "o/r", "model.gguf", token="")
    assert job.url == hub.url("o/r", "model.gguf") and job.headers == {}
    assert (await make(dirs).pull(job)).read_bytes() == data


# -- disk space ---------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs, so that a download really fills the disk."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_not_enough_space_fails_before_transferring(hub, small_disk):
    hub.add("o/r", "big.gguf", synthetic(5 * MB, seed=8))
    models, partial = small_disk / "models", small_disk / "partial"
    with pytest.raises(DiskFullError, match=r"needs 5\.0 MB, 3\.\d MB free on .*small-disk"):
        await make((models, partial)).pull(job_for(hub, "big.gguf"))
    assert hub.cdn_gets() == []
    assert listing(models) == [] and listing(partial) == []


async def test_a_disk_that_fills_up_mid_transfer_leaves_nothing_broken(hub, small_disk):
    hub.add("o/r", "big.gguf", synthetic(5 * MB, seed=9))
    hub.knobs.send_sizes = False  # no X-Linked-Size, no Content-Length: the pre-check cannot know
    models, partial = small_disk / "models", small_disk / "partial"
    events: list[DownloadProgress] = []
    with pytest.raises(DiskFullError, match="disk filled up while downloading big.gguf") as full:
        await make((models, partial), events).pull(job_for(hub, "big.gguf"))
    assert "removed" in str(full.value) and "free some space" in str(full.value)
    assert listing(models) == [] and listing(partial) == []
    assert shutil.disk_usage(small_disk).used < 100_000  # the space is given back
    assert events[-1].state == "error"


async def test_partials_on_another_disk_are_copied_into_place(hub, tmp_path):
    mount = tmp_path / "other-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs (needs root or CAP_SYS_ADMIN)")
    try:
        data = synthetic(2 * MB, seed=10)
        hub.add("o/r", "model.gguf", data)
        models = tmp_path / "models"
        models.mkdir()
        assert os.stat(models).st_dev != os.stat(mount).st_dev
        path = await make((models, mount / "partial")).pull(job_for(hub, "model.gguf"))
        assert path.read_bytes() == data and listing(mount / "partial") == []
        assert listing(models) == ["model.gguf", "model.gguf.sha256"]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# -- control ------------------------------------------------------------------------------------------

async def test_cancel_stops_promptly_and_removes_the_partial(hub, dirs):
    hub.add("o/r", "model.gguf", synthetic(4 * MB, seed=11))
    hub.knobs.stall_after = 2 * MB
    d = make(dirs)
    pulling = asyncio.create_task(d.pull(job_for(hub, "model.gguf", "m")))
    await wait_until(lambda: (p := d.progress("m")) and p.done_bytes == 2 * MB, what="2 MB on disk")
    assert (dirs[1] / "model.gguf.partial").exists()

    assert d.cancel("m") is True
    with pytest.raises(DownloadCancelled, match="cancelled") as cancelled:
        await asyncio.wait_for(pulling, 10)
    assert not cancelled.value.kept_partial
    assert listing(dirs[1]) == [] and listing(dirs[0]) == []
    assert d.progress("m").state == "cancelled"
    assert d.cancel("m") is False  # nothing running any more


async def test_a_caller_that_goes_away_stops_the_pull_and_keeps_the_partial(hub, dirs):
    hub.add("o/r", "model.gguf", synthetic(4 * MB, seed=20))
    hub.knobs.stall_after = 3 * MB
    d = make(dirs)
    caller = asyncio.create_task(d.pull(job_for(hub, "model.gguf", "m")))
    await wait_until(lambda: (p := d.progress("m")) and p.done_bytes == 3 * MB, what="3 MB on disk")
    caller.cancel()  # e.g. the node shutting down cancels its tasks
    with pytest.raises(asyncio.CancelledError):
        await caller
    await wait_until(lambda: d.progress("m").state == "cancelled", what="the pull to stop")
    assert (dirs[1] / "model.gguf.partial").stat().st_size == 3 * MB
    assert "next pull resumes" in d.progress("m").error


async def test_two_files_download_at_once(hub, dirs):
    a, b = synthetic(3 * MB, seed=12), synthetic(2 * MB, seed=13)
    hub.add("o/a", "a.gguf", a)
    hub.add("o/b", "b.gguf", b)
    hub.knobs.stall_after = MB
    d = make(dirs)
    pulls = asyncio.gather(d.pull(job_for(hub, "a.gguf")), d.pull(job_for(hub, "b.gguf")))
    # Both are mid-transfer at the same moment: the second did not wait for the first.
    await wait_until(lambda: all((p := d.progress(i)) and p.done_bytes == MB for i in ("a.gguf", "b.gguf")),
                     what="both downloads at 1 MB")
    assert hub.active_bodies == 2
    hub.release_stall()
    path_a, path_b = await pulls
    assert path_a.read_bytes() == a and path_b.read_bytes() == b


async def test_the_same_model_pulled_twice_at_once_downloads_once(hub, dirs):
    data = synthetic(3 * MB, seed=14)
    hub.add("o/r", "model.gguf", data)
    d = make(dirs)
    first, second = await asyncio.gather(d.pull(job_for(hub, "model.gguf", "m")),
                                         d.pull(job_for(hub, "model.gguf", "m")))
    assert first == second and first.read_bytes() == data
    assert len(hub.cdn_gets()) == 1 and hub.bytes_sent() == len(data)
    assert d.progress("never-pulled") is None


async def test_one_id_from_two_sources_at_once_is_refused(hub, dirs):
    hub.add("o/r", "model.gguf", synthetic(MB, seed=19))
    hub.knobs.stall_after = 0
    d = make(dirs)
    pulling = asyncio.create_task(d.pull(job_for(hub, "model.gguf", "m")))
    await wait_until(lambda: hub.active_bodies == 1, what="the first pull to start")
    other = DownloadJob(id="m", url=hub.url("o/other", "model.gguf"), filename="model.gguf")
    with pytest.raises(DownloadError, match="'m' is already being downloaded from"):
        await d.pull(other)
    hub.release_stall()
    await pulling


async def test_one_file_for_two_ids_at_once_is_refused(hub, dirs):
    hub.add("o/r", "model.gguf", synthetic(MB, seed=15))
    hub.knobs.stall_after = 0
    d = make(dirs)
    pulling = asyncio.create_task(d.pull(job_for(hub, "model.gguf", "one")))
    await wait_until(lambda: hub.active_bodies == 1, what="the first pull to start")
    with pytest.raises(DownloadError, match="already being downloaded for 'one'"):
        await d.pull(job_for(hub, "model.gguf", "two"))
    hub.release_stall()
    await pulling


async def test_progress_reports_total_done_rate_and_eta_and_ends_done(hub, dirs):
    size = 3 * MB
    hub.add("o/r", "model.gguf", synthetic(size, seed=16))
    hub.knobs.rate_bps = 3 * MB  # about one second
    events: list[DownloadProgress] = []
    started = time.monotonic()
    await make(dirs, events).pull(job_for(hub, "model.gguf", "m"))
    elapsed = time.monotonic() - started

    states = [e.state for e in events]
    assert states[0] == "queued" and states[-1] == "done"
    assert states.index("downloading") < states.index("verifying") < states.index("done")
    flowing = [e for e in events if e.state == "downloading" and e.done_bytes > 0]
    assert flowing and all(e.total_bytes == size for e in flowing)
    assert [e.done_bytes for e in flowing] == sorted(e.done_bytes for e in flowing)
    measured = [e for e in flowing if e.rate_bps > 0]
    assert measured and all(e.eta_seconds is not None and e.eta_seconds >= 0 for e in measured)
    assert 0.3 * MB < measured[-1].rate_bps < 30 * MB
    assert len(flowing) <= elapsed * 5 + 3  # throttled to about five a second
    assert events[-1].done_bytes == size and events[-1].eta_seconds == 0

"""Hugging Face specifics (endpoint, token in the OS keyring, HF cache reuse) and the keyring wrapper."""

from __future__ import annotations

import keyring
import keyring.backend
import keyring.backends.fail
import keyring.errors
import pytest
from huggingface_hub import constants as hf_constants

from runtime import secrets
from runtime.models import hf
from tests.keyrings import MemoryKeyring


class LockedKeyring(MemoryKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        raise keyring.errors.KeyringLocked("the collection is locked")


@pytest.fixture
def use_keyring():
    """Install a keyring backend for one test, restoring the one before afterwards."""
    previous = keyring.get_keyring()

    def install(backend: keyring.backend.KeyringBackend) -> keyring.backend.KeyringBackend:
        keyring.set_keyring(backend)
        return backend

    yield install
    keyring.set_keyring(previous)


@pytest.fixture
def memory_keyring(use_keyring) -> MemoryKeyring:
    return use_keyring(MemoryKeyring())


@pytest.fixture(autouse=True)
def no_machine_token(monkeypatch, tmp_path):
    """Neither this machine's HF token file nor its environment leaks into the tests."""
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-hf-token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_CACHE", "HF_HOME",
                 "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)


# -- endpoint and URLs ----------------------------------------------------------------------------------

def test_resolve_url_defaults_to_huggingface_co():
    assert hf.get_endpoint() == "https://huggingface.co"
    assert (hf.resolve_url("bartowski/Qwen3-8B-GGUF", "Qwen3-8B-Q4_K_M.gguf")
            == "https://huggingface.co/bartowski/Qwen3-8B-GGUF/resolve/main/Qwen3-8B-Q4_K_M.gguf")


def test_hf_endpoint_env_is_read_at_call_time(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    assert hf.get_endpoint() == "https://hf-mirror.example"
    assert hf.resolve_url("o/r", "sub dir/m.gguf", revision="refs/pr/1") == (
        "https://hf-mirror.example/o/r/resolve/refs%2Fpr%2F1/sub%20dir/m.gguf")


def test_an_explicit_endpoint_wins(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    assert hf.resolve_url("o/r", "m.gguf", endpoint="http://127.0.0.1:9/") == (
        "http://127.0.0.1:9/o/r/resolve/main/m.gguf")


# -- token ------------------------------------------------------------------------------------------------

def test_token_set_get_delete_in_the_keyring(memory_keyring):
    assert hf.get_token() is None
    hf.set_token("  hf_abc  ")
    assert memory_keyring.items == {("ClosedMesh", hf.TOKEN_SECRET_NAME): "hf_abc"}
    assert hf.get_token() == "hf_abc"
    assert hf.auth_headers() == {"Authorization": "Bearer hf_abc"}
    assert hf.delete_token() is True
    assert hf.get_token() is None and hf.auth_headers() == {}
    assert hf.delete_token() is False


def test_the_keyring_token_comes_before_hf_token(memory_keyring, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert hf.get_token() == "hf_from_env"
    hf.set_token("hf_from_keyring")
    assert hf.get_token() == "hf_from_keyring"
    job = hf.download_job("Qwen3-8B", "o/r", "Qwen3-8B-Q4_K_M.gguf")
    assert job.headers == {"Authorization": "Bearer hf_from_keyring"}
    assert job.filename == "Qwen3-8B-Q4_K_M.gguf" and "hf_from_keyring" not in repr(job)


def test_the_hf_login_token_file_is_used_last(memory_keyring, monkeypatch, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("hf_from_login\n")
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(token_file))
    assert hf.get_token() == "hf_from_login"


def test_an_empty_token_is_refused(memory_keyring):
    with pytest.raises(ValueError):
        hf.set_token("   ")


def test_without_a_keyring_storing_says_what_to_do(use_keyring, monkeypatch):
    use_keyring(keyring.backends.fail.Keyring())
    with pytest.raises(secrets.SecretStoreUnavailable) as unavailable:
        hf.set_token("hf_abc")
    message = str(unavailable.value)
    assert "no system keyring is available" in message
    assert "Secret Service" in message and "HF_TOKEN" in message
    with pytest.raises(secrets.SecretStoreUnavailable):
        hf.delete_token()
    # Reading still works: the environment is the fallback, not an error.
    assert hf.get_token() is None
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert hf.get_token() == "hf_from_env"


def test_a_locked_keyring_says_to_unlock_it(use_keyring):
    use_keyring(LockedKeyring())
    with pytest.raises(secrets.SecretStoreUnavailable, match="locked.*Unlock it"):
        secrets.get_secret("anything")


def test_secrets_round_trip(memory_keyring):
    assert secrets.get_secret("nkey") is None
    secrets.set_secret("nkey", "SUABC")
    assert secrets.get_secret("nkey") == "SUABC"
    assert secrets.delete_secret("nkey") is True
    assert secrets.delete_secret("nkey") is False
    with pytest.raises(ValueError):
        secrets.set_secret("nkey", "")


# -- HF cache reuse ---------------------------------------------------------------------------------------

COMMIT = "5c7e3f4d6b2a1908f7e6d5c4b3a2918070605040"


def make_hf_cache(root, repo: str, filename: str, data: bytes, commit: str = COMMIT):
    """The layout huggingface_hub writes: blobs/<etag>, snapshots/<commit>/<file> → blob, refs/main."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    blob = repo_dir / "blobs" / "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    snapshot = repo_dir / "snapshots" / commit / filename
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(blob)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def test_find_in_hf_cache_uses_hf_hub_cache(monkeypatch, tmp_path):
    cache = tmp_path / "hub"
    snapshot = make_hf_cache(cache, "bartowski/Qwen3-8B-GGUF", "Qwen3-8B-Q4_K_M.gguf", b"GGUF...")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    found = hf.find_in_hf_cache("bartowski/Qwen3-8B-GGUF", "Qwen3-8B-Q4_K_M.gguf")
    assert found == snapshot and found.read_bytes() == b"GGUF..."
    assert hf.find_in_hf_cache("bartowski/Qwen3-8B-GGUF", "Qwen3-8B-Q4_K_M.gguf", revision=COMMIT) == snapshot
    assert hf.find_in_hf_cache("bartowski/Qwen3-8B-GGUF", "Qwen3-8B-Q8_0.gguf") is None
    assert hf.find_in_hf_cache("bartowski/Qwen3-8B-GGUF", "Qwen3-8B-Q4_K_M.gguf", revision="other") is None
    assert hf.find_in_hf_cache("someone/else", "Qwen3-8B-Q4_K_M.gguf") is None


def test_find_in_hf_cache_uses_hf_home(monkeypatch, tmp_path):
    snapshot = make_hf_cache(tmp_path / "hf-home" / "hub", "o/r", "m.gguf", b"x")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert hf.find_in_hf_cache("o/r", "m.gguf") == snapshot


def test_find_in_hf_cache_ignores_known_missing_files_and_dangling_links(monkeypatch, tmp_path):
    cache = tmp_path / "hub"
    snapshot = make_hf_cache(cache, "o/r", "m.gguf", b"x")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    no_exist = cache / "models--o--r" / ".no_exist" / COMMIT / "gone.gguf"
    no_exist.parent.mkdir(parents=True)
    no_exist.touch()
    assert hf.find_in_hf_cache("o/r", "gone.gguf") is None
    snapshot.resolve().unlink()  # the blob was cleaned up, the snapshot link is left dangling
    assert hf.find_in_hf_cache("o/r", "m.gguf") is None

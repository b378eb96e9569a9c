"""Hugging Face specifics: the endpoint, file URLs, the access token and reuse of the HF cache.

Everything here reads its environment at call time (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_CACHE``,
``HF_HOME``), not at import time as ``huggingface_hub.constants`` does, so a setting changed while the
node runs (or by a test) takes effect.

The transfer itself is not done with ``huggingface_hub`` but by :mod:`runtime.models.download`; see
there for why.
"""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hf_constants

from .. import secrets
from .download import DownloadJob

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKEN_SECRET_NAME = "huggingface-token"


def get_endpoint() -> str:
    """The Hugging Face endpoint: ``HF_ENDPOINT`` (a mirror) when set, else huggingface.co."""
    value = os.environ.get("HF_ENDPOINT", "").strip() or DEFAULT_ENDPOINT
    return value.rstrip("/")


def resolve_url(repo: str, file: str, revision: str = "main", endpoint: str | None = None) -> str:
    """The download URL of ``file`` in the model repo ``repo`` at ``revision``
    (``{endpoint}/{repo}/resolve/{revision}/{file}``, the path quoted)."""
    return huggingface_hub.hf_hub_url(repo, file, revision=revision, endpoint=(endpoint or get_endpoint()).rstrip("/"))


# -- token --------------------------------------------------------------------------------------------


def get_token() -> str | None:
    """The Hugging Face token: the one stored in the OS keyring first, else ``HF_TOKEN`` or the token
    file that ``hf auth login`` writes (through huggingface_hub). None when there is none. A missing
    keyring is not an error here: the environment still works."""
    try:
        stored = secrets.get_secret(TOKEN_SECRET_NAME)
    except secrets.SecretStoreUnavailable:
        stored = None
    return stored or huggingface_hub.get_token()


def set_token(token: str) -> None:
    """Store the token in the OS keyring (raises ``SecretStoreUnavailable`` when there is none)."""
    token = token.strip()
    if not token:
        raise ValueError("the Hugging Face token is empty")
    secrets.set_secret(TOKEN_SECRET_NAME, token)


def delete_token() -> bool:
    """Remove the stored token from the OS keyring; True when one was stored."""
    return secrets.delete_secret(TOKEN_SECRET_NAME)


def auth_headers(token: str | None = None) -> dict[str, str]:
    """``Authorization: Bearer …`` for ``token`` (or :func:`get_token`); empty when there is none."""
    token = token if token is not None else get_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def download_job(
    model_id: str,
    repo: str,
    file: str,
    *,
    revision: str = "main",
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    filename: str | None = None,
    token: str | None = None,
) -> DownloadJob:
    """A :class:`DownloadJob` for a file of a Hugging Face model repo, with the token when there is one.
    The sha256 and size, when not given, come from the Hub's ``X-Linked-Etag``/``X-Linked-Size``."""
    return DownloadJob(
        id=model_id,
        url=resolve_url(repo, file, revision),
        filename=filename or Path(file).name,
        expected_sha256=expected_sha256,
        expected_size=expected_size,
        headers=auth_headers(token),
    )


# -- cache reuse ---------------------------------------------------------------------------------------


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(hf_constants.HF_HUB_CACHE)


def find_in_hf_cache(repo: str, file: str, revision: str = "main") -> Path | None:
    """The file when the Hugging Face cache already holds it (downloaded by any HF tool), else None.
    ``revision`` is a branch name (resolved through ``refs/``) or a commit hash."""
    found = huggingface_hub.try_to_load_from_cache(repo, file, cache_dir=hub_cache_dir(), revision=revision)
    if isinstance(found, str):  # not None and not the "known not to exist" marker
        path = Path(found)
        return path if path.is_file() else None  # a snapshot link whose blob was deleted
    return None

"""Secrets in the OS keyring (macOS Keychain, Windows Credential Locker, the Secret Service on Linux).

A thin wrapper over ``keyring`` under one service name, "ClosedMesh". Its one job beyond keyring is
to turn "there is no keyring here" (headless Linux, a container, a locked or broken backend) into one
clear error, :class:`SecretStoreUnavailable`, that says what the user can do instead.

The calls are synchronous and a backend may block (a keychain asking to be unlocked): async code calls
them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import keyring
import keyring.errors

SERVICE = "ClosedMesh"

_WHAT_TO_DO = (
    "On Linux, install and start a Secret Service provider (GNOME Keyring or KeePassXC, with a desktop "
    "session unlocked) and install the 'secretstorage' Python package; or do without the keyring: set "
    "the HF_TOKEN environment variable for the Hugging Face token."
)


class SecretStoreUnavailable(RuntimeError):
    """No usable OS keyring: nothing can be stored or read there."""


def _unavailable(action: str, error: Exception) -> SecretStoreUnavailable:
    if isinstance(error, keyring.errors.KeyringLocked):
        return SecretStoreUnavailable(
            f"could not {action}: the system keyring is locked ({error}). Unlock it (log in to the "
            f"desktop session, or open your keyring app) and try again."
        )
    backend_class = type(keyring.get_keyring())
    backend = f"{backend_class.__module__}.{backend_class.__qualname__}"
    detail = str(error) or type(error).__name__
    return SecretStoreUnavailable(
        f"could not {action}: no system keyring is available (backend {backend}: {detail}). {_WHAT_TO_DO}"
    )


def get_secret(name: str) -> str | None:
    """The secret stored under ``name``, or None when there is none."""
    try:
        return keyring.get_password(SERVICE, name)
    except keyring.errors.KeyringError as e:
        raise _unavailable(f"read the secret '{name}' from the system keyring", e) from e


def set_secret(name: str, value: str) -> None:
    if not value:
        raise ValueError("refusing to store an empty secret; use delete_secret to remove it")
    try:
        keyring.set_password(SERVICE, name, value)
    except keyring.errors.KeyringError as e:
        raise _unavailable(f"store the secret '{name}' in the system keyring", e) from e


def delete_secret(name: str) -> bool:
    """Remove the secret; True when there was one to remove."""
    try:
        if keyring.get_password(SERVICE, name) is None:
            return False
        keyring.delete_password(SERVICE, name)
        return True
    except keyring.errors.PasswordDeleteError:
        return False  # gone between the two calls
    except keyring.errors.KeyringError as e:
        raise _unavailable(f"delete the secret '{name}' from the system keyring", e) from e

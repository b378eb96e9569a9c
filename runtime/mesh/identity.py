"""A node's mesh identity: an Ed25519 key encoded as a NATS user NKey.

The seed lives in the OS keyring. Where there is no keyring (a headless Linux server, a container) it
falls back to a file readable by its owner only, next to the node's other secrets, and says so in the
log: a node must be able to rejoin after a restart wherever it runs.
"""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import nkeys
from nacl.exceptions import BadSignatureError
from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from ..config import read_secret_file
from ..secrets import SecretStoreUnavailable, get_secret, set_secret

log = logging.getLogger(__name__)


class InvalidKey(ValueError):
    pass


def new_seed() -> str:
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


def verify_key(public: str) -> VerifyKey:
    """The Ed25519 verify key inside a user NKey (U…, 56 characters, checksummed)."""
    try:
        raw = base64.b32decode(public.encode())
    except (ValueError, TypeError) as e:
        raise InvalidKey(f"not an NKey: {public!r}") from e
    if (
        len(raw) != 35
        or raw[0] != nkeys.PREFIX_BYTE_USER
        or nkeys.crc16(bytearray(raw[:33])).to_bytes(2, "little") != raw[33:]
    ):
        raise InvalidKey(f"not a user NKey: {public!r}")
    return VerifyKey(raw[1:33])


def verify(public: str, data: bytes, signature: bytes) -> bool:
    try:
        verify_key(public).verify(data, signature)
        return True
    except (BadSignatureError, InvalidKey, ValueError):
        return False


def box_public_key(public: str) -> PublicKey:
    """The X25519 key that requests to this node are sealed to (derived from its signing key)."""
    return verify_key(public).to_curve25519_public_key()


@dataclass(frozen=True)
class Identity:
    seed: str

    def __post_init__(self) -> None:
        try:
            kp = nkeys.from_seed(bytearray(self.seed.encode()))
        except Exception as e:
            raise InvalidKey("the stored mesh key is damaged") from e
        object.__setattr__(self, "_kp", kp)
        object.__setattr__(self, "public", kp.public_key.decode())
        raw = nkeys.decode_seed(bytearray(self.seed.encode()))[1]
        object.__setattr__(self, "_signing", SigningKey(bytes(raw)))
        # derived once: every request this node receives is opened with it (a ~0.1 ms conversion)
        object.__setattr__(self, "_box", self._signing.to_curve25519_private_key())  # type: ignore[attr-defined]

    public: str = ""  # set in __post_init__

    @classmethod
    def generate(cls) -> Identity:
        return cls(new_seed())

    def sign(self, data: bytes) -> bytes:
        return self._signing.sign(data).signature  # type: ignore[attr-defined]

    def box_private_key(self) -> PrivateKey:
        return self._box  # type: ignore[attr-defined]

    def __repr__(self) -> str:  # never print the seed
        return f"Identity({self.public})"


def load_or_create(name: str, fallback_file: Path) -> Identity:
    """The identity stored under ``name`` in the keyring (or in ``fallback_file`` when there is no
    keyring), created on first use."""
    try:
        seed = get_secret(name)
        if seed:
            return Identity(seed)
        ident = Identity.generate()
        set_secret(name, ident.seed)
        return ident
    except SecretStoreUnavailable:
        seed = read_secret_file(fallback_file)  # a mode looser than 0600 is fixed, with a warning
        if seed is not None:
            return Identity(seed)
        log.warning("no system keyring here; keeping the mesh key in %s (readable by you only)", fallback_file)
        ident = Identity.generate()
        fallback_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(fallback_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(ident.seed + "\n")
        return ident

"""TLS between nodes and a private hub: the hub makes its own certificate, and invites carry it, so a
joining node trusts exactly that certificate (pinned) and nothing else — no CA, no hostname games when
the hub's LAN address changes."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def ensure_certificate(tls_dir: Path, addresses: list[str]) -> tuple[Path, Path]:
    """The hub's certificate and key (made once; the key readable by its owner only)."""
    cert_path, key_path = tls_dir / "hub-cert.pem", tls_dir / "hub-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    tls_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ClosedMesh hub")])
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(socket.gethostname() or "localhost")]
    for a in {"127.0.0.1", *addresses}:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(a)))
        except ValueError:
            pass
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def certificate_token(cert_path: Path) -> str:
    """The certificate as it travels in invites and config: base64 of its DER bytes."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def client_context(token: str) -> ssl.SSLContext:
    """A client context that trusts exactly the pinned hub certificate."""
    der = base64.b64decode(token)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=der)
    ctx.check_hostname = False  # the pinned certificate is the only trust anchor; LAN addresses change
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx

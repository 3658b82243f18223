"""A site-generated TLS certificate, for sites that provide none.

The key (ECDSA P-256) is written 0600 with ``O_EXCL``; existing files are
never overwritten, so a certificate the site provides later is never replaced
by accident, and a second run is a no-op. Clients trust the certificate file
itself (``curl --cacert``, ``httpx.Client(verify=...)``).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.errors import InputError
from appliance.safe_fs import create_new

DEFAULT_DAYS = 825  # the longest validity common TLS clients accept


class CertificateError(InputError):
    """A site certificate cannot be generated (bad names, files in the way)."""


_SERVER_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=False,
    crl_sign=False, encipher_only=False, decipher_only=False,
)  # fmt: skip


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        if not name or any(c.isspace() or c in "/:@" for c in name):
            raise CertificateError(f"{name!r} is neither a host name nor an IP address") from None
        return x509.DNSName(name)


def generate_self_signed(
    cert_file: Path, key_file: Path, names: Sequence[str], *, days: int = DEFAULT_DAYS
) -> bool:
    """Write a key and a self-signed certificate for ``names``; ``False`` if both already exist."""
    if cert_file.exists() and key_file.exists():
        return False
    if cert_file.exists() or key_file.exists():
        present = cert_file if cert_file.exists() else key_file
        raise CertificateError(
            f"{present} exists without its pair; refusing to overwrite it",
            hint="Remove it, or provide both the certificate and the key.",
        )
    if not names:
        raise CertificateError("give at least one name (the gateway's host name or IP address)")
    if not 1 <= days <= 3650:
        raise CertificateError(f"validity must be 1 to 3650 days, found {days}")
    sans = [_general_name(n) for n in names]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_SERVER_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(key_file, key_pem, 0o600)
    try:
        _write_new(cert_file, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    except BaseException:
        key_file.unlink(missing_ok=True)
        raise
    return True


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        create_new(path, data, mode, exact_mode=True)  # whatever the umask
    except OSError as exc:
        raise CertificateError(f"{path}: cannot create: {exc.strerror or exc}") from exc

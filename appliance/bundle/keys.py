"""Ed25519 signing keys: generate, store, load.

A key pair is two files: ``NAME.key`` (PKCS#8 PEM private key, optionally
encrypted with a passphrase, created 0600 with O_EXCL so it is never readable
by others, not even for an instant) and ``NAME.pub.json`` (the public key in
the securesystemslib/TUF key format, with its keyid). Passphrases never travel
on a command line: they come from a file, an environment variable, or a prompt.
Every key and passphrase file is read through ``input_files`` (regular files
only, at most ``LIMITS["key"]``/``LIMITS["text"]`` bytes, never blocking).
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey

from appliance.errors import InputError, KeyFileError
from appliance.input_files import parse_json, read_input, read_text_input
from appliance.safe_fs import create_new

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


@dataclass(frozen=True, slots=True)
class KeyPair:
    name: str
    keyid: str
    private_path: Path
    public_path: Path


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` 0600 (never wider, not even briefly); refuse to overwrite."""
    try:
        create_new(path, data, 0o600)
    except FileExistsError:
        raise InputError(
            f"{path} already exists; refusing to overwrite a key",
            hint="Choose another --name or directory.",
        ) from None


def public_key_dict(key: SSlibKey, name: str) -> dict[str, Any]:
    return {"keyid": key.keyid, "name": name, **key.to_dict()}


def generate_key(out_dir: Path, name: str, passphrase: bytes | None = None) -> KeyPair:
    if not _NAME.match(name):
        raise InputError(
            f"key name {name!r} is not allowed: use letters, digits, '.', '_', '-' (max 64)"
        )
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path = out_dir / f"{name}{PRIVATE_SUFFIX}"
    public_path = out_dir / f"{name}{PUBLIC_SUFFIX}"
    if public_path.exists():
        raise InputError(f"{public_path} already exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public = SSlibKey.from_crypto(private.public_key())
    write_private(private_path, pem)
    public_path.write_text(
        json.dumps(public_key_dict(public, name), indent=2, sort_keys=True) + "\n"
    )
    return KeyPair(name, public.keyid, private_path, public_path)


def load_public_key(path: Path) -> tuple[SSlibKey, str]:
    """The public key and its display name from a ``.pub.json`` file."""
    raw = read_input(path, "public key", limit="key", error=KeyFileError)
    try:
        data = parse_json(raw, f"public key {path}", error=KeyFileError)
    except KeyFileError as exc:
        exc.hint = "Expected the .pub.json written by `appliance keys generate`."
        raise
    if not isinstance(data, dict) or "keyid" not in data:
        raise KeyFileError(
            f"{path} is not a public key file: expected an object with keyid, keytype, scheme, keyval"
        )
    fields = {k: v for k, v in data.items() if k not in ("keyid", "name")}
    try:
        key = SSlibKey.from_dict(str(data["keyid"]), fields)
    except (KeyError, ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a valid public key: {exc}") from exc
    if key.keytype != "ed25519" or key.scheme != "ed25519":
        raise KeyFileError(f"{path}: expected an ed25519 key, found {key.keytype}/{key.scheme}")
    expected = SSlibKey.from_crypto(_public_crypto(key, path)).keyid
    if key.keyid != expected:
        raise KeyFileError(
            f"{path}: keyid {key.keyid[:16]}... does not match the key (expected {expected[:16]}...)"
        )
    return key, str(data.get("name") or path.name.removesuffix(PUBLIC_SUFFIX))


def _public_crypto(key: SSlibKey, path: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.keyval["public"]))
    except (KeyError, ValueError) as exc:
        raise KeyFileError(f"{path}: the public key value is not a 32-byte hex string") from exc


def load_signer(path: Path, passphrase: bytes | None = None) -> CryptoSigner:
    """A signer from a private key file. Refuses group/world-readable key files."""
    pem = read_input(path, "private key", limit="key", error=KeyFileError)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror or exc}") from exc
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyFileError(
            f"private key {path} is readable by other users (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"Run `chmod 600 {path}`, and consider the key exposed if others could read it.",
        )
    try:
        private = serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError as exc:  # encrypted without passphrase, or passphrase for a plain key
        needs = b"ENCRYPTED" in pem
        raise KeyFileError(
            f"private key {path} {'is encrypted: a passphrase is needed' if needs else 'is not encrypted: do not pass a passphrase'}",
            hint="Pass --passphrase-file FILE, set --passphrase-env VAR, or use --ask-passphrase."
            if needs
            else None,
        ) from exc
    except ValueError as exc:
        raise KeyFileError(
            f"cannot load private key {path}: wrong passphrase or not a PEM private key"
        ) from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"private key {path} is not an Ed25519 key")
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))


def read_passphrase(
    *, file: Path | None = None, env: str | None = None, ask: bool = False, confirm: bool = False
) -> bytes | None:
    """A passphrase from a file (first line), an environment variable, or a prompt; never argv."""
    if file is not None:
        # The error names the file and the problem, never the content (a secret).
        text = read_text_input(file, "passphrase file", limit="text").splitlines()
        if not text or not text[0]:
            raise InputError(f"passphrase file {file} is empty")
        return text[0].encode()
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise InputError(
                f"environment variable {env} is not set or empty (expected the passphrase)"
            )
        return value.encode()
    if ask:
        import getpass
        import sys

        if not sys.stdin.isatty():
            raise InputError(
                "--ask-passphrase needs a terminal; use --passphrase-file or --passphrase-env in scripts"
            )
        first = getpass.getpass("Passphrase: ")
        if confirm and getpass.getpass("Again: ") != first:
            raise InputError("the two passphrases differ")
        if not first:
            raise InputError("an empty passphrase was entered")
        return first.encode()
    return None

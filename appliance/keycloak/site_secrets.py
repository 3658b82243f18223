"""Secrets generated on site: client secrets of the caller clients, Keycloak's bootstrap admin.

Never in a bundle, never on a command line, never printed or logged: every
function returns or names *paths*; messages say where a secret is, not what it
is. Files are created 0600 (never wider, not even for an instant: ``O_EXCL``
with mode 0600, then an atomic rename) in a directory kept 0700; a secrets
file readable by group or others, a symlink or a non-regular file is refused.
Existing secrets are kept: running the deploy again yields the same secrets
(callers keep working), and a caller added later gets a new one.

Files in the site secrets directory (one per realm)::

    client-secrets.json   {"schema_version": 1, "realm": R, "clients": {CLIENT_ID: SECRET}}
    keycloak-admin.env    KC_BOOTSTRAP_ADMIN_USERNAME=... / KC_BOOTSTRAP_ADMIN_PASSWORD=...
                          (a systemd EnvironmentFile; Keycloak creates the temporary
                          admin from it on its first start)
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from appliance.input_files import open_input, parse_json, read_opened
from appliance.keycloak.errors import SiteSecretsError
from appliance.safe_fs import replace_atomically

CLIENT_SECRETS_FILE = "client-secrets.json"
ADMIN_ENV_FILE = "keycloak-admin.env"
ADMIN_USERNAME = "appliance-admin"
ADMIN_ENV_KEYS = ("KC_BOOTSTRAP_ADMIN_USERNAME", "KC_BOOTSTRAP_ADMIN_PASSWORD")
SECRETS_SCHEMA_VERSION = 1
SECRET_BYTES = 32  # token_urlsafe(32): 43 characters, 256 bits
MAX_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ClientSecrets:
    """The client secrets of one realm. ``repr`` and ``str`` show the path and ids only."""

    path: Path
    realm: str
    _values: Mapping[str, str] = field(repr=False)

    @property
    def client_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._values))

    def secret(self, client_id: str) -> str:
        try:
            return self._values[client_id]
        except KeyError:
            raise SiteSecretsError(
                f"{self.path} holds no secret for client {client_id!r} (realm {self.realm!r})",
                hint="Generate it with ensure_client_secrets (the deploy does), never by hand.",
            ) from None

    def __str__(self) -> str:
        return f"client secrets of realm {self.realm!r} in {self.path}"


# --- files ---------------------------------------------------------------------------


def ensure_private_dir(directory: Path) -> Path:
    """``directory`` exists, is a real directory, and only its owner can enter it (0700)."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise SiteSecretsError(f"{directory} must be a directory, not a symlink or a file")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(directory, 0o700)
    return directory


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 from the first byte; replaces ``path``."""
    replace_atomically(Path(path), text.encode("utf-8"), 0o600)


def read_private(path: Path, what: str) -> str:
    """The text of a secrets file that only its owner can read; refuse anything else."""
    path = Path(path)
    if not os.path.lexists(path):
        raise SiteSecretsError(f"{path}: {what} not found")
    # A regular file, not a symbolic link, opened without blocking (a FIFO never hangs).
    fd = open_input(path, what, limit=MAX_FILE_BYTES, error=SiteSecretsError, follow_symlinks=False)
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise SiteSecretsError(
                f"{path}: {what} is readable by group or others (mode {mode:04o}); expected 0600",
                hint=f"Run: chmod 600 {path}",
            )
        if st.st_uid != os.geteuid():
            raise SiteSecretsError(
                f"{path}: {what} belongs to uid {st.st_uid}, not to this user ({os.geteuid()})"
            )
        data = read_opened(fd, path, what, limit=MAX_FILE_BYTES, error=SiteSecretsError)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SiteSecretsError(f"{path}: {what} is not UTF-8 text") from None


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


# --- client secrets ------------------------------------------------------------------


def _parse_client_secrets(path: Path, text: str) -> ClientSecrets:
    def refuse(problem: str) -> SiteSecretsError:
        return SiteSecretsError(
            f"{path}: not a client secrets file ({problem})",
            hint="It is written by appliance only; restore it from the site's backup.",
        )

    problem = None
    try:
        data = parse_json(text, "secrets", error=SiteSecretsError)
    except SiteSecretsError as exc:
        # The parser's messages name a place or a key, never a value.
        detail = exc.message.removeprefix("secrets: ")
        problem = (
            "invalid JSON" + detail.removeprefix("not valid JSON")
            if detail.startswith("not valid JSON")
            else detail
        )
    if problem is not None:
        # Raised outside the except block: the parser's error chains to the whole document.
        raise refuse(problem)
    if not isinstance(data, dict) or set(data) != {"schema_version", "realm", "clients"}:
        raise refuse("expected the keys schema_version, realm, clients")
    if data["schema_version"] != SECRETS_SCHEMA_VERSION:
        raise refuse(
            f"schema_version {data['schema_version']!r}, expected {SECRETS_SCHEMA_VERSION}"
        )
    clients = data["clients"]
    if not isinstance(data["realm"], str) or not isinstance(clients, dict):
        raise refuse("realm must be a string and clients an object")
    for client_id, value in clients.items():
        if not isinstance(value, str) or len(value) < SECRET_BYTES:
            raise refuse(f"the secret of {client_id!r} is not a generated secret")
    return ClientSecrets(path, data["realm"], dict(clients))


def load_client_secrets(path: Path) -> ClientSecrets:
    path = Path(path)
    return _parse_client_secrets(path, read_private(path, "client secrets file"))


def ensure_client_secrets(directory: Path, realm: str, client_ids: Iterable[str]) -> ClientSecrets:
    """The client secrets of ``realm`` in ``directory``: existing ones kept, missing ones added."""
    directory = ensure_private_dir(directory)
    path = directory / CLIENT_SECRETS_FILE
    values: dict[str, str] = {}
    if path.exists() or path.is_symlink():
        existing = load_client_secrets(path)
        if existing.realm != realm:
            raise SiteSecretsError(
                f"{path} holds the secrets of realm {existing.realm!r}, not of {realm!r}",
                hint="Keep one secrets directory per realm.",
            )
        values = {cid: existing.secret(cid) for cid in existing.client_ids}
    wanted = sorted(set(client_ids))
    missing = [cid for cid in wanted if cid not in values]
    if missing or not path.exists():
        values.update({cid: new_secret() for cid in missing})
        document = {"schema_version": SECRETS_SCHEMA_VERSION, "realm": realm, "clients": values}
        write_private(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return ClientSecrets(path, realm, dict(values))


# --- Keycloak's bootstrap admin ------------------------------------------------------


def ensure_admin_env(directory: Path, username: str = ADMIN_USERNAME) -> Path:
    """The EnvironmentFile with Keycloak's bootstrap admin, created once; returns its path only."""
    directory = ensure_private_dir(directory)
    path = directory / ADMIN_ENV_FILE
    if path.exists() or path.is_symlink():
        check_admin_env(path)
        return path
    write_private(
        path,
        "# Keycloak's temporary bootstrap admin, generated on site by appliance (0600).\n"
        f"{ADMIN_ENV_KEYS[0]}={username}\n{ADMIN_ENV_KEYS[1]}={new_secret()}\n",
    )
    return path


def check_admin_env(path: Path) -> None:
    """``path`` is a private admin EnvironmentFile with both keys; its values are not returned."""
    text = read_private(path, "Keycloak admin environment file")
    keys = {
        line.split("=", 1)[0]
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and "=" in line
    }
    missing = [k for k in ADMIN_ENV_KEYS if k not in keys]
    if missing:
        raise SiteSecretsError(
            f"{path}: Keycloak admin environment file lacks {', '.join(missing)}"
        )

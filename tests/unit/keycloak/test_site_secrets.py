"""Site secrets: 0600 from the first byte, kept across runs, refused when exposed, never shown."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from appliance.keycloak.errors import SiteSecretsError
from appliance.keycloak.site_secrets import (
    ADMIN_ENV_FILE,
    ADMIN_ENV_KEYS,
    CLIENT_SECRETS_FILE,
    check_admin_env,
    ensure_admin_env,
    ensure_client_secrets,
    load_client_secrets,
    write_private,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def values(path: Path) -> dict[str, str]:
    data: dict[str, str] = json.loads(path.read_text())["clients"]
    return data


def test_client_secrets_are_generated_0600_in_a_0700_directory(tmp_path: Path) -> None:
    directory = tmp_path / "site" / "keycloak"
    secrets = ensure_client_secrets(directory, "appliance", ["bot", "analytics"])
    assert secrets.path == directory / CLIENT_SECRETS_FILE
    assert mode(directory) == 0o700 and mode(secrets.path) == 0o600
    stored = values(secrets.path)
    assert set(stored) == {"bot", "analytics"}
    assert stored["bot"] != stored["analytics"]
    assert all(len(v) >= 43 for v in stored.values())  # 256 bits, url-safe base64
    assert secrets.secret("bot") == stored["bot"]


def test_secrets_are_kept_and_new_callers_get_one(tmp_path: Path) -> None:
    first = ensure_client_secrets(tmp_path, "appliance", ["bot"])
    before = first.secret("bot")
    stat_before = first.path.stat()
    again = ensure_client_secrets(tmp_path, "appliance", ["bot"])
    assert again.secret("bot") == before
    assert again.path.stat().st_mtime_ns == stat_before.st_mtime_ns  # not rewritten
    more = ensure_client_secrets(tmp_path, "appliance", ["bot", "new"])
    assert more.secret("bot") == before and more.secret("new") != before
    assert mode(more.path) == 0o600


def test_nothing_shows_a_secret(tmp_path: Path) -> None:
    secrets = ensure_client_secrets(tmp_path, "appliance", ["bot"])
    value = secrets.secret("bot")
    assert value not in repr(secrets) and value not in str(secrets)
    with pytest.raises(SiteSecretsError) as caught:
        secrets.secret("nobody")
    assert value not in str(caught.value)


def test_another_realms_file_is_refused(tmp_path: Path) -> None:
    ensure_client_secrets(tmp_path, "appliance", ["bot"])
    with pytest.raises(
        SiteSecretsError, match="holds the secrets of realm 'appliance', not of 'lab'"
    ):
        ensure_client_secrets(tmp_path, "lab", ["bot"])


def test_a_secrets_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secrets = ensure_client_secrets(tmp_path, "appliance", ["bot"])
    secrets.path.chmod(0o644)
    with pytest.raises(SiteSecretsError) as caught:
        load_client_secrets(secrets.path)
    assert "readable by group or others (mode 0644); expected 0600" in caught.value.message
    assert caught.value.hint == f"Run: chmod 600 {secrets.path}"


def test_a_symlinked_secrets_file_is_refused(tmp_path: Path) -> None:
    secrets = ensure_client_secrets(tmp_path / "real", "appliance", ["bot"])
    link = tmp_path / "link.json"
    link.symlink_to(secrets.path)
    with pytest.raises(SiteSecretsError, match="found a symbolic link"):
        load_client_secrets(link)


def test_a_corrupt_secrets_file_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / CLIENT_SECRETS_FILE
    write_private(path, '{"schema_version": 1, "realm": "r", "clients": {"bot": "TOPSECRET-')
    with pytest.raises(SiteSecretsError) as caught:
        load_client_secrets(path)
    assert "invalid JSON at line 1" in caught.value.message
    assert "TOPSECRET" not in str(caught.value)
    assert caught.value.__context__ is None  # the JSON error (which keeps the document) is dropped


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"schema_version": 1, "realm": "r"}, "expected the keys schema_version, realm, clients"),
        ({"schema_version": 9, "realm": "r", "clients": {}}, "schema_version 9"),
        (
            {"schema_version": 1, "realm": "r", "clients": {"bot": "short"}},
            "not a generated secret",
        ),
    ],
)
def test_malformed_secrets_files_are_refused(
    tmp_path: Path, document: object, problem: str
) -> None:
    path = tmp_path / CLIENT_SECRETS_FILE
    write_private(path, json.dumps(document))
    with pytest.raises(SiteSecretsError, match=problem):
        load_client_secrets(path)


def test_write_private_is_atomic_and_0600(tmp_path: Path) -> None:
    target = tmp_path / "realm.json"
    target.write_text("old")
    target.chmod(0o644)
    write_private(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["realm.json"]  # no temporary left


def test_a_group_readable_directory_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "site"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    ensure_client_secrets(directory, "appliance", ["bot"])
    assert mode(directory) == 0o700


def test_admin_env_is_created_once_0600_and_never_overwritten(tmp_path: Path) -> None:
    path = ensure_admin_env(tmp_path)
    assert path == tmp_path / ADMIN_ENV_FILE and mode(path) == 0o600
    text = path.read_text()
    lines = dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    assert set(lines) == set(ADMIN_ENV_KEYS)
    assert lines["KC_BOOTSTRAP_ADMIN_USERNAME"] == "appliance-admin"
    assert len(lines["KC_BOOTSTRAP_ADMIN_PASSWORD"]) >= 43
    assert ensure_admin_env(tmp_path) == path
    assert path.read_text() == text


def test_admin_env_problems_name_the_file_not_the_password(tmp_path: Path) -> None:
    path = ensure_admin_env(tmp_path)
    password = path.read_text().splitlines()[-1].split("=", 1)[1]
    path.chmod(0o640)
    with pytest.raises(SiteSecretsError) as caught:
        ensure_admin_env(tmp_path)
    assert str(path) in caught.value.message and password not in str(caught.value)
    path.chmod(0o600)
    write_private(path, "KC_BOOTSTRAP_ADMIN_USERNAME=x\n")
    with pytest.raises(SiteSecretsError, match="lacks KC_BOOTSTRAP_ADMIN_PASSWORD"):
        check_admin_env(path)

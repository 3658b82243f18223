"""Keycloak's unit and environment file, its bundle artifacts, and the build-once/import logic."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.payload import ArtifactEntry, MediaLayout, Payload
from appliance.deploy.keycloak_files import (
    ADMIN_ENV_PATH,
    BUILD_OPTIONS,
    UNIT_NAME,
    KeycloakSettings,
    keycloak_artifacts,
    render_keycloak_files,
    template_vars,
)
from appliance.deploy.staging import unpack_argv
from appliance.keycloak.errors import KeycloakArtifactError, KeycloakSettingsError
from tests.unit.keycloak.conftest import assert_golden_text

SETTINGS = KeycloakSettings("https://llm.site.example")
ETC = "/etc/appliance/releases/3"


def variables(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "release_version": 3,
        "bundle_name": "demo-cpu",
        "content_digest": "0123456789abcdef",
        "realm_name": "appliance",
        "realm_digest": "feedfacecafebeef",
        "settings": SETTINGS,
    }
    return template_vars(**{**args, **overrides})


def rendered(**overrides: Any) -> dict[str, str]:
    etc = overrides.pop("etc", ETC)
    files = render_keycloak_files(variables(etc_dir=etc, **overrides), etc)
    return {Path(f.path).name: f.content for f in files}


def unit_lines(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]


# --- the rendered files ------------------------------------------------------------------


def test_unit_and_env_are_golden() -> None:
    files = rendered()
    assert_golden_text("appliance-keycloak.service", files[UNIT_NAME])
    assert_golden_text("keycloak.env", files["keycloak.env"])


def test_unit_runs_optimised_with_realm_import_on_the_internal_address_only() -> None:
    unit = rendered()[UNIT_NAME]
    (start,) = unit_lines(unit, "ExecStart")
    argv = shlex.split(start)
    assert argv[:4] == [
        "/var/lib/appliance/keycloak-dist/3/bin/kc.sh",
        "start",
        "--optimized",
        "--import-realm",
    ]
    assert "--hostname=https://llm.site.example" in argv
    assert "--http-enabled=true" in argv and "--http-host=127.0.0.1" in argv
    assert "--proxy-headers=xforwarded" in argv
    assert "--proxy-trusted-addresses=127.0.0.1" in argv
    assert unit_lines(unit, "User") == ["appliance-keycloak"]
    assert unit_lines(unit, "Environment")[0] == "JAVA_HOME=/opt/appliance/releases/3/runtime/java"
    assert unit_lines(unit, "EnvironmentFile") == [f"{ETC}/keycloak.env", ADMIN_ENV_PATH]
    assert unit_lines(unit, "ProtectSystem") == ["strict"]
    pre = unit_lines(unit, "ExecStartPre")
    assert len(pre) == 2 and " build " in pre[0] and " import --optimized --file " in pre[1]


def test_no_secret_and_no_admin_credentials_in_the_rendered_files() -> None:
    for text in rendered().values():
        assert "KC_BOOTSTRAP_ADMIN_PASSWORD" not in text
        assert "secret" not in text.lower().replace("no secret", "")


def test_build_options_are_in_the_environment_both_commands_read() -> None:
    env = rendered()["keycloak.env"]
    for key, value in BUILD_OPTIONS.items():
        assert f"{key}={value}\n" in env
    assert (
        "KC_DB_URL=jdbc:h2:file:/var/lib/appliance/keycloak/h2/keycloakdb;NON_KEYWORDS=VALUE" in env
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    home = tmp_path / "kc"
    (home / "bin").mkdir(parents=True)
    kc = home / "bin/kc.sh"
    kc.write_text("#!/bin/sh\nexit 0\n")
    kc.chmod(0o755)
    files = rendered(keycloak_home=str(home), release_dir=str(tmp_path), etc=str(tmp_path))
    unit = tmp_path / UNIT_NAME
    unit.write_text(files[UNIT_NAME])
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # not even a warning


# --- build once, import when the realm changes ------------------------------------------------


def run_prestart(tmp_path: Path, realm_digest: str, **settings: Any) -> list[str]:
    """Run the unit's ExecStartPre commands against a stub kc.sh; returns what it was asked."""
    home, state = tmp_path / "kc", tmp_path / "state"
    (home / "bin").mkdir(parents=True, exist_ok=True)
    (home / "lib/quarkus").mkdir(parents=True, exist_ok=True)
    state.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    calls.write_text("")
    kc = home / "bin/kc.sh"
    kc.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    kc.chmod(0o755)
    unit = rendered(
        keycloak_home=str(home),
        state_dir=str(state),
        realm_digest=realm_digest,
        settings=KeycloakSettings("https://llm.site.example", **settings),
    )[UNIT_NAME]
    for command in unit_lines(unit, "ExecStartPre"):
        subprocess.run(shlex.split(command), check=True, timeout=30)
    return calls.read_text().splitlines()


def test_first_start_builds_and_imports(tmp_path: Path) -> None:
    calls = run_prestart(tmp_path, "aaaaaaaaaaaaaaaa")
    assert calls == [
        "build",
        f"import --optimized --file {tmp_path}/kc/data/import/appliance-realm.json --override true",
    ]


def test_restart_does_neither(tmp_path: Path) -> None:
    run_prestart(tmp_path, "aaaaaaaaaaaaaaaa")
    assert run_prestart(tmp_path, "aaaaaaaaaaaaaaaa") == []


def test_a_new_realm_is_imported_without_rebuilding(tmp_path: Path) -> None:
    run_prestart(tmp_path, "aaaaaaaaaaaaaaaa")
    calls = run_prestart(tmp_path, "bbbbbbbbbbbbbbbb")
    assert len(calls) == 1 and calls[0].startswith("import ")
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "realm-bbbbbbbbbbbbbbbb.imported"
    ]


def test_rollback_to_the_previous_realm_imports_it_again(tmp_path: Path) -> None:
    run_prestart(tmp_path, "aaaaaaaaaaaaaaaa")
    run_prestart(tmp_path, "bbbbbbbbbbbbbbbb")
    assert [c.split()[0] for c in run_prestart(tmp_path, "aaaaaaaaaaaaaaaa")] == ["import"]


def test_other_build_options_rebuild(tmp_path: Path) -> None:
    run_prestart(tmp_path, "aaaaaaaaaaaaaaaa")
    # JAVA_OPTS_APPEND is not a build option: no rebuild.
    assert run_prestart(tmp_path, "aaaaaaaaaaaaaaaa", java_opts_append="-Xmx1g") == []
    # A build option (here the database vendor) changes the marker: the next start rebuilds.
    assert run_prestart(tmp_path, "aaaaaaaaaaaaaaaa", extra_env={"KC_DB": "postgres"}) == ["build"]


# --- settings refused ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (KeycloakSettings("http://llm.site.example"), "must be https://HOST[:PORT]"),
        (KeycloakSettings("https://llm.site.example/auth"), "must be https://HOST[:PORT]"),
        (KeycloakSettings("https://x", http_host="0.0.0.0"), "internal address only, not 0.0.0.0"),
        (KeycloakSettings("https://x", http_host="localhost"), "must be an IP address"),
        (KeycloakSettings("https://x", trusted_proxies=("gateway",)), "not an address or network"),
        (KeycloakSettings("https://x", management_port=8180), "ports must differ"),
    ],
)
def test_unusable_settings_are_refused(settings: KeycloakSettings, problem: str) -> None:
    with pytest.raises(KeycloakSettingsError, match=re.escape(problem)):
        variables(settings=settings)


@pytest.mark.parametrize(
    "extra", [{"KC_BOOTSTRAP_ADMIN_PASSWORD": "x"}, {"JAVA_OPTS_APPEND": "a\nKC_DB=x"}]
)
def test_the_environment_file_takes_no_secret_and_one_line_values(extra: dict[str, str]) -> None:
    with pytest.raises(KeycloakSettingsError, match="cannot go in the environment file"):
        variables(settings=KeycloakSettings("https://x", extra_env=extra))


# --- artifacts -----------------------------------------------------------------------------


def payload(*names: str) -> Payload:
    return Payload(
        name="demo",
        created="2026-01-01T00:00:00Z",
        created_by="appliance 0.1.0",
        artifacts=[
            ArtifactEntry(
                name=n, path=f"artifacts/{n}/{n}.tar.gz", url=f"https://example.org/{n}.tar.gz",
                sha256="0" * 63 + "1",
            )
            for n in names
        ],
        media=MediaLayout(part_size=1 << 20, parts=[]),
    )  # fmt: skip


def test_the_bundle_must_carry_keycloak_and_java() -> None:
    with pytest.raises(KeycloakArtifactError) as caught:
        keycloak_artifacts(payload("java-runtime"))
    assert "carries no keycloak artifact" in caught.value.message
    assert "bundles/keycloak.yaml" in (caught.value.hint or "")
    with pytest.raises(KeycloakArtifactError, match="no keycloak and no java-runtime"):
        keycloak_artifacts(payload())
    keycloak, java = keycloak_artifacts(payload("keycloak", "java-runtime"))
    assert (keycloak.name, java.name) == ("keycloak", "java-runtime")


def test_unpack_strips_the_top_directory_and_keeps_no_owner(tmp_path: Path) -> None:
    source = tmp_path / "keycloak-26.7.4"
    (source / "bin").mkdir(parents=True)
    (source / "bin/kc.sh").write_text("#!/bin/sh\n")
    (source / "bin/kc.sh").chmod(0o755)
    archive = tmp_path / "kc.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tar.gettarinfo(str(source / "bin/kc.sh"), "keycloak-26.7.4/bin/kc.sh")
        info.uid, info.gid, info.uname, info.gname = 4242, 4242, "someone", "someone"
        with (source / "bin/kc.sh").open("rb") as handle:
            tar.addfile(info, handle)
    dest = tmp_path / "dest"
    dest.mkdir()
    subprocess.run(unpack_argv(str(archive), str(dest)), check=True, timeout=30)
    kc = dest / "bin/kc.sh"
    assert kc.is_file() and kc.stat().st_mode & 0o111
    assert kc.stat().st_uid != 4242

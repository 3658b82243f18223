"""Keycloak in a host's desired state (``sso.install`` in the site file), no host needed.

What the deploy lays down for Keycloak must come from the bundle (its
``keycloak`` and ``java-runtime`` artifacts) and the site (its access file and
secrets directory); secrets may only travel as secret files (0600, from
private local files), never in a rendered file, a template variable, the
Ansible variables, the probe or the diff. The shell that unpacks the
distribution runs here for real against a small archive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pwd
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from appliance.bundle.payload import ArtifactEntry
from appliance.bundle.site.verify import VerifiedBundle
from appliance.deploy.engines.ansible import dump_host_vars
from appliance.deploy.gateway_layer import secure
from appliance.deploy.host_desired import DistSpec, HostDesired
from appliance.deploy.host_layout import GATEWAY_UNIT, GROUP_WATCH_UNIT, KEYCLOAK_UNIT, UNIT_NAME
from appliance.deploy.keycloak_files import ADMIN_ENV_PATH, KEYCLOAK_USER, STATE_DIR
from appliance.deploy.keycloak_layer import install_keycloak
from appliance.deploy.probe import diff, parse_probe, probe_script
from appliance.deploy.render import desired_state
from appliance.deploy.site import Site, SiteFileError, load_site
from appliance.deploy.staging import dist_command, staging_commands
from appliance.errors import InputError
from appliance.keycloak.errors import KeycloakArtifactError
from appliance.keycloak.site_secrets import load_client_secrets
from appliance.plan.inventory import HostEntry, Inventory
from appliance.plan.report import Plan
from tests.unit.deploy.test_gateway_layer import host, plan, verified  # noqa: F401 - fixtures

MODEL = "mistral-7b-instruct-v0.3"
GATEWAY = "https://10.231.0.2:8443"
SITE = f"""schema_version: 1
network: {{site_cidrs: [10.231.0.0/24], admin_cidrs: [10.231.0.1/32]}}
tokens:
  issuer: {GATEWAY}/realms/appliance
  jwks_url: http://127.0.0.1:8180/realms/appliance/protocol/openid-connect/certs
sso:
  url: http://127.0.0.1:8180
  realm: appliance
  install: {{access_file: access.yaml, secrets_dir: secrets}}
"""
ACCESS = {
    "schema_version": 1,
    "realm": "appliance",
    "callers": [{"client_id": "support-bot", "description": "support", "models": [MODEL]}],
}
ARTIFACTS = [
    ArtifactEntry(name="java-runtime", path="artifacts/java-runtime/jre.tar.gz",
                  url="https://example.invalid/jre.tar.gz", sha256="a" * 64),
    ArtifactEntry(name="keycloak", path="artifacts/keycloak/keycloak-26.7.4.tar.gz",
                  url="https://example.invalid/kc.tar.gz", sha256="b" * 64),
]  # fmt: skip
DIST = "/var/lib/appliance/keycloak-dist/4"


def write_site(tmp_path: Path, text: str = SITE, access: dict[str, object] = ACCESS) -> Site:
    (tmp_path / "access.yaml").write_text(json.dumps(access))
    (tmp_path / "site.yaml").write_text(text)
    return load_site(tmp_path / "site.yaml")


def with_keycloak(bundle: VerifiedBundle) -> VerifiedBundle:
    payload = bundle.payload.model_copy(update={"artifacts": ARTIFACTS})
    return dataclasses.replace(bundle, payload=payload)


def installed(
    bundle: VerifiedBundle, for_plan: Plan, site: Site, entries: tuple[HostEntry, ...] = ()
) -> HostDesired:
    entry = host()
    inventory = Inventory(schema_version=1, hosts=[entry, *entries])
    base = desired_state(bundle, for_plan.commands[0], entry, engine="llamacpp")
    secured = secure(base, for_plan, bundle, site, inventory)
    return install_keycloak(secured, for_plan, bundle, site, inventory)


def secrets_of(site: Site) -> list[str]:
    assert site.secrets_dir is not None
    clients = load_client_secrets(site.secrets_dir / "client-secrets.json")
    admin = (site.secrets_dir / "keycloak-admin.env").read_text()
    password = re.search(r"KC_BOOTSTRAP_ADMIN_PASSWORD=(\S+)", admin)
    assert password is not None
    return [clients.secret(c) for c in clients.client_ids] + [password.group(1)]


def test_keycloak_from_the_bundle_and_the_site(
    verified: VerifiedBundle,  # noqa: F811
    plan: Plan,  # noqa: F811
    tmp_path: Path,
) -> None:
    site = write_site(tmp_path)
    d = installed(with_keycloak(verified), plan, site)
    assert d.units == (UNIT_NAME, KEYCLOAK_UNIT, GATEWAY_UNIT)  # Keycloak up before the gateway
    assert [(u.name, u.home, u.shell) for u in d.users] == [
        (KEYCLOAK_USER, STATE_DIR, "/usr/sbin/nologin")
    ]
    assert [(o.path, o.owner, o.mode) for o in d.owned_dirs] == [
        (STATE_DIR, KEYCLOAK_USER, 0o700),
        ("/etc/appliance/keycloak", "root", 0o700),
    ]
    # The Java runtime is part of the release (unpacked while staged); Keycloak is not.
    assert [(u.archive, u.path) for u in d.unpacks] == [
        (
            f"{d.release_dir}/files/artifacts/java-runtime/jre.tar.gz",
            f"{d.release_dir}/runtime/java",
        )
    ]
    assert d.dists == (
        DistSpec(f"{d.release_dir}/files/artifacts/keycloak/keycloak-26.7.4.tar.gz", DIST,
                 KEYCLOAK_USER, ("lib/quarkus", "data", "data/import"), private=("data",)),
    )  # fmt: skip
    realm_file, admin_file = d.secret_files
    assert (realm_file.path, realm_file.owner, realm_file.mode) == (
        f"{DIST}/data/import/appliance-realm.json", KEYCLOAK_USER, 0o600,
    )  # fmt: skip
    assert (admin_file.path, admin_file.owner, admin_file.mode) == (ADMIN_ENV_PATH, "root", 0o600)
    for secret in d.secret_files:  # sent from private local files, with their digests
        assert secret.source.stat().st_mode & 0o777 == 0o600
        assert secret.sha256 == hashlib.sha256(secret.source.read_bytes()).hexdigest()
    imported = json.loads(realm_file.source.read_text())
    assert [c["clientId"] for c in imported["clients"]] == ["appliance-api", "support-bot"]
    unit = d.unit_file_of(KEYCLOAK_UNIT).content
    assert f"--hostname={GATEWAY} " in unit and "--http-host=127.0.0.1 --http-port=8180" in unit
    assert "JAVA_HOME=/opt/appliance/releases/4/runtime/java" in unit
    assert f"realm-{hashlib.sha256(realm_file.source.read_bytes()).hexdigest()[:16]}" in unit
    assert d.keycloak_health == "http://127.0.0.1:9000/health/ready"
    assert d.keycloak == {
        "issuer": f"{GATEWAY}/realms/appliance",
        "admin_password_file": str(tmp_path / "secrets/keycloak-admin.env"),
        "admin_password_file_on_host": ADMIN_ENV_PATH,
        "client_secrets_file": str(tmp_path / "secrets/client-secrets.json"),
    }
    gateway = next(r for r in d.rendered if r.path.endswith("/gateway.yaml")).content
    assert "install" not in gateway and "http://127.0.0.1:8180" in gateway


def test_no_secret_outside_the_secret_files(
    verified: VerifiedBundle,  # noqa: F811
    plan: Plan,  # noqa: F811
    tmp_path: Path,
) -> None:
    site = write_site(tmp_path)
    d = installed(with_keycloak(verified), plan, site)
    secrets = secrets_of(site)
    assert len(secrets) == 2 and all(len(s) >= 43 for s in secrets)
    changes = diff(d, parse_probe(""))
    visible = [
        *(r.content for r in d.rendered),
        json.dumps(d.template_vars),
        dump_host_vars(d),  # what the Ansible engine writes
        probe_script(d),
        repr(changes),
        repr(d),
    ]
    for text in visible:
        for secret in secrets:
            assert secret not in text


def test_a_new_caller_gets_a_secret_and_a_new_import_others_are_kept(
    verified: VerifiedBundle,  # noqa: F811
    plan: Plan,  # noqa: F811
    tmp_path: Path,
) -> None:
    bundle = with_keycloak(verified)
    site = write_site(tmp_path)
    first = installed(bundle, plan, site)
    before = load_client_secrets(tmp_path / "secrets/client-secrets.json")
    admin = (tmp_path / "secrets/keycloak-admin.env").read_text()
    assert installed(bundle, plan, site).secret_files == first.secret_files  # stable
    callers = [*ACCESS["callers"], {"client_id": "hr-bot", "description": "hr", "models": [MODEL]}]  # type: ignore[misc]
    second = installed(bundle, plan, write_site(tmp_path, access={**ACCESS, "callers": callers}))
    after = load_client_secrets(tmp_path / "secrets/client-secrets.json")
    assert after.secret("support-bot") == before.secret("support-bot")
    assert after.client_ids == ("hr-bot", "support-bot")
    assert (tmp_path / "secrets/keycloak-admin.env").read_text() == admin  # never rewritten
    assert second.secret_files[0].sha256 != first.secret_files[0].sha256
    assert second.secret_files[1] == first.secret_files[1]
    # The unit names the new realm's digest: the next start imports it.
    assert second.unit_file_of(KEYCLOAK_UNIT).content != first.unit_file_of(KEYCLOAK_UNIT).content


def test_a_bundle_without_keycloak_or_several_hosts_are_refused(
    verified: VerifiedBundle,  # noqa: F811
    plan: Plan,  # noqa: F811
    tmp_path: Path,
) -> None:
    site = write_site(tmp_path)
    with pytest.raises(KeycloakArtifactError, match="no keycloak and no java-runtime artifact"):
        installed(verified, plan, site)
    other = HostEntry(name="lab-2", address="10.231.0.3", roles=["model-server", "gateway"])
    with pytest.raises(InputError, match=r"one host; the inventory has 2 model-server hosts"):
        installed(with_keycloak(verified), plan, site, (other,))


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("url: http://127.0.0.1:8180", "url: http://10.231.0.2:8180", "expected sso.url http://127.0.0.1:PORT"),
        ("url: http://127.0.0.1:8180", "url: http://127.0.0.1:99999", "expected sso.url http://127.0.0.1:PORT"),
        (f"issuer: {GATEWAY}/realms/appliance", "issuer: https://sso.example/realms/other",
         r"expected tokens.issuer https://GATEWAY\[:PORT\]/realms/appliance"),
        ("jwks_url: http://127.0.0.1:8180/realms", "jwks_url: https://sso.example/realms",
         "expected tokens.jwks_url http://127.0.0.1:8180/realms/appliance/protocol/openid-connect/certs"),
        ("appliance", "other", "is for realm 'appliance', sso.realm is 'other'"),
        ("secrets_dir: secrets}", "secrets_dir: secrets, management_port: 8180}", "both 8180"),
        ("access_file: access.yaml", "access_file: nowhere.yaml", r"nowhere\.yaml"),
        ("access_file: access.yaml, ", "", "missing required key `sso.install.access_file`"),
    ],
)  # fmt: skip
def test_site_files_that_cannot_install_keycloak_are_refused(
    tmp_path: Path, old: str, new: str, problem: str
) -> None:
    text = SITE.replace(old, new)  # ("appliance", "other"): the whole site for another realm
    assert text != SITE
    with pytest.raises(InputError, match=problem):
        write_site(tmp_path, text)


def test_the_audience_must_be_the_access_files_api_client(tmp_path: Path) -> None:
    with pytest.raises(
        SiteFileError, match=r"api_client is 'llm-api', tokens\.audience is 'appliance-api'"
    ):
        write_site(tmp_path, access={**ACCESS, "api_client": "llm-api"})


def test_probe_and_diff_cover_user_directories_unpacking_and_secret_files(
    verified: VerifiedBundle,  # noqa: F811
    plan: Plan,  # noqa: F811
    tmp_path: Path,
) -> None:
    d = installed(with_keycloak(verified), plan, write_site(tmp_path))
    script = probe_script(d)
    assert f"getent passwd {KEYCLOAK_USER}" in script and f"{DIST}/.appliance-unpacked" in script
    kinds = {(c.kind, c.target) for c in diff(d, parse_probe(""))}
    assert {("user", KEYCLOAK_USER), ("create-dir", STATE_DIR), ("unpack", DIST),
            ("unpack", f"{d.release_dir}/runtime/java"),
            ("put-secret", ADMIN_ENV_PATH)} <= kinds  # fmt: skip
    realm, admin = d.secret_files
    t = "\t"
    present = "\n".join([
        f"user{t}{KEYCLOAK_USER}", f"owner{t}{STATE_DIR}{t}{KEYCLOAK_USER} 700",
        f"owner{t}/etc/appliance/keycloak{t}root 700", f"unpacked{t}{DIST}/.appliance-unpacked",
        f"unpacked{t}{d.release_dir}/runtime/java",
        f"file{t}{realm.path}{t}{realm.sha256}", f"owner{t}{realm.path}{t}{KEYCLOAK_USER} 600",
        f"file{t}{admin.path}{t}{admin.sha256}", f"owner{t}{admin.path}{t}root 644",
    ])  # fmt: skip
    left = [(c.kind, c.target, c.detail) for c in diff(d, parse_probe(present))
            if c.kind in ("user", "unpack", "put-secret") or c.target in (STATE_DIR, "/etc/appliance/keycloak")]  # fmt: skip
    # Only the admin file readable by others is to mend (its content is right).
    assert left == [
        ("put-secret", ADMIN_ENV_PATH, f"found root 644 (from {admin.source}, root, 0600)")
    ]


# --- the unpacking shell, run here ---------------------------------------------------------


def archive(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(f"top-1.0/{name}")
            info.size, info.mode = len(text), 0o755
            tar.addfile(info, io.BytesIO(text.encode()))
    return path


def test_the_distribution_is_unpacked_whole_once_and_handed_over_in_part(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    dest = tmp_path / "dist/4"
    spec = DistSpec(str(archive(tmp_path / "kc.tar.gz", {"bin/kc.sh": "#!/bin/sh\n"})), str(dest),
                    me, ("lib/quarkus", "data", "data/import"), ("data",))  # fmt: skip
    subprocess.run(["sh", "-c", dist_command(spec)], check=True, timeout=30)
    assert (dest / "bin/kc.sh").read_text() == "#!/bin/sh\n"  # top directory stripped
    assert (dest / "data/import").is_dir() and (dest / "lib/quarkus").is_dir()
    assert (dest / "data").stat().st_mode & 0o777 == 0o700  # the import's secrets: owner only
    assert (dest / "lib/quarkus").stat().st_mode & 0o777 == 0o755
    assert Path(spec.marker).exists() and not Path(f"{dest}.partial").exists()
    (dest / "data/kept").write_text("Keycloak's own data")
    subprocess.run(["sh", "-c", dist_command(spec)], check=True, timeout=30)
    assert (dest / "data/kept").exists()  # done once: a second run leaves it alone
    # A damaged archive: nothing is put in place, no marker.
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b" + b"\0" * 100)
    other = dataclasses.replace(spec, archive=str(broken), path=str(tmp_path / "dist/5"))
    assert (
        subprocess.run(
            ["sh", "-c", dist_command(other)], check=False, capture_output=True, timeout=30
        ).returncode
        != 0
    )
    assert not (tmp_path / "dist/5").exists()


def staged_java(bundle: VerifiedBundle, for_plan: Plan, staging: Path) -> HostDesired:
    """The model server's desired state with a Java runtime, its archive in ``staging``."""
    (staging / "files/artifacts/java-runtime").mkdir(parents=True)
    archive(staging / "files/artifacts/java-runtime/jre.tar.gz", {"bin/java": "#!/bin/sh\n"})
    return desired_state(with_keycloak(bundle), for_plan.commands[0], host(), engine="llamacpp")


def test_the_java_runtime_is_unpacked_into_the_staged_release(
    verified: VerifiedBundle,  # noqa: F811
    plan: Plan,  # noqa: F811
    tmp_path: Path,
) -> None:
    staging = tmp_path / "staging"
    d = staged_java(verified, plan, staging)
    d = dataclasses.replace(d, venvs=())  # the venvs need wheels; the unpacking is what is tested
    (staging / "runtime/java/stale").parent.mkdir(parents=True)
    (staging / "runtime/java/stale").write_text("from an interrupted run")
    [command] = staging_commands(d, str(staging))
    subprocess.run(["sh", "-c", command], check=True, timeout=30)
    assert sorted(p.name for p in (staging / "runtime/java").iterdir()) == ["bin"]
    assert (staging / "runtime/java/bin/java").stat().st_mode & 0o111


def test_the_staging_steps_run_side_by_side_and_any_failure_fails_them_all(
    verified: VerifiedBundle,  # noqa: F811
    plan: Plan,  # noqa: F811
    tmp_path: Path,
) -> None:
    from appliance.deploy.staging import staging_command

    staging = tmp_path / "staging"
    d = staged_java(verified, plan, staging)
    command = staging_command(d, str(staging))
    # The venv step fails here (no wheels): the command fails, says which step and why,
    # while the other step (the Java runtime) still ran.
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120,
                            check=False)  # fmt: skip
    assert result.returncode != 0
    assert "staging step 1 of 2 failed:" in result.stderr and "step 2" not in result.stderr
    assert (staging / "runtime/java/bin/java").exists()
    assert not (staging / ".installed.jsonl").exists()  # no record of a failed staging
    nothing = dataclasses.replace(d, venvs=(), unpacks=())
    # With nothing to build, the staging step is the install record alone.
    assert subprocess.run(["sh", "-c", staging_command(nothing, str(staging))], check=False,
                          timeout=60).returncode == 0  # fmt: skip
    assert (staging / ".installed.jsonl").exists()


def test_activation_does_not_wait_for_keycloaks_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keycloak's first start builds in ExecStartPre (minutes): `systemctl restart` would block
    the activation's SSH call past its timeout, so Keycloak alone is started without waiting and
    its readiness polled after. (The SSH call is replaced by a fake recording the script.)"""
    from appliance.deploy import activation, transport

    scripts: list[str] = []
    monkeypatch.setattr(transport, "run", lambda h, script, **kw: scripts.append(script) or "")
    activation.activate(host(), 4)
    restarts = re.findall(r"systemctl restart [^;]+", scripts[0])
    assert restarts == [
        f"systemctl restart {UNIT_NAME}",
        f"systemctl restart --no-block {KEYCLOAK_UNIT}",
        # the gateway checks the realm's keys before it starts: beside Keycloak it is not waited
        # on either (its health is polled after Keycloak's); without Keycloak it is
        f"systemctl restart --no-block {GATEWAY_UNIT}",
        f"systemctl restart {GATEWAY_UNIT}",
        # a group member's watch judges the group as it forms: never waited on
        f"systemctl restart --no-block {GROUP_WATCH_UNIT}",
    ]
    gateway_line = next(
        line for line in scripts[0].splitlines() if f"--no-block {GATEWAY_UNIT}" in line
    )
    assert (
        f"if [ -f /etc/systemd/system/{KEYCLOAK_UNIT} ]; then systemctl restart --no-block"
        in gateway_line
    )

"""Keycloak on a host: where its files go, its artifacts in the bundle, and the rendered unit.

Host layout (release N; the deploy lays it down, this module names it)::

    /opt/appliance/releases/N/files/artifacts/keycloak/<dist>.tar.gz       signed, read-only
    /opt/appliance/releases/N/files/artifacts/java-runtime/<jre>.tar.gz     signed, read-only
    /opt/appliance/releases/N/runtime/java/           the JRE, unpacked (JAVA_HOME), root, read-only
    /var/lib/appliance/keycloak-dist/N/               Keycloak, unpacked (KC_HOME), root-owned;
        lib/quarkus/, data/                           owned by appliance-keycloak (``kc.sh build``
                                                      writes lib/quarkus, Keycloak writes data/)
        data/import/<realm>-realm.json                the rendered import (secrets), 0600 appliance-keycloak
    /var/lib/appliance/keycloak/                      state kept across releases (H2 database,
                                                      the digest of the last imported realm), 0700
    /etc/appliance/releases/N/appliance-keycloak.service, keycloak.env     rendered here
    /etc/appliance/keycloak/keycloak-admin.env        bootstrap admin, 0600 root (site_secrets)

The unit runs as the system user ``appliance-keycloak`` with everything but its
own directories read-only; ``kc.sh build`` runs once per release (a marker
named after the build options), the realm is imported with ``kc.sh import``
when its digest differs from the last import (first start, upgrade, rollback),
then ``kc.sh start --optimized --import-realm`` listens on the internal address
only, behind the gateway (plain HTTP, proxy headers from the gateway alone).

The deploy side of Keycloak: ``deploy.keycloak_layer`` adds these files to a
host's desired state; the realm, the access file and the site's secrets are
``appliance.keycloak``'s.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from appliance.deploy.host_desired import RenderedFile
from appliance.deploy.host_layout import JAVA_ARTIFACT, JAVA_DIR, KEYCLOAK_UNIT
from appliance.keycloak.errors import KeycloakArtifactError, KeycloakSettingsError

if TYPE_CHECKING:
    from appliance.bundle.payload import ArtifactEntry, Payload

UNIT_NAME = KEYCLOAK_UNIT
UNIT_TEMPLATE = "appliance-keycloak.service.j2"
ENV_TEMPLATE = "keycloak.env.j2"
ENV_FILE_NAME = "keycloak.env"
KEYCLOAK_USER = "appliance-keycloak"
DIST_ROOT = "/var/lib/appliance/keycloak-dist"
STATE_DIR = "/var/lib/appliance/keycloak"
ADMIN_ENV_PATH = "/etc/appliance/keycloak/keycloak-admin.env"
KEYCLOAK_ARTIFACT = "keycloak"
DEFAULT_HTTP_PORT = 8180
DEFAULT_MANAGEMENT_PORT = 9000

# Build-time options: `kc.sh build` bakes them in and `start --optimized` must see the
# same values, so they live in the environment file both read. Changing one changes
# the build marker, so the next start rebuilds.
BUILD_OPTIONS: dict[str, str] = {
    "KC_DB": "dev-file",
    "KC_CACHE": "local",  # one node: no cluster discovery traffic
    "KC_HEALTH_ENABLED": "true",
    "KC_METRICS_ENABLED": "false",
}


@dataclass(frozen=True, slots=True)
class KeycloakSettings:
    """How the site reaches Keycloak: through the gateway at ``public_url``."""

    public_url: str  # e.g. https://llm.example.internal — the issuer is PUBLIC_URL/realms/R
    http_host: str = "127.0.0.1"  # internal address only
    http_port: int = DEFAULT_HTTP_PORT
    management_port: int = DEFAULT_MANAGEMENT_PORT  # /health/ready, same host
    trusted_proxies: tuple[str, ...] = ("127.0.0.1",)  # the gateway's address(es)
    java_opts_append: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        url = urlsplit(self.public_url)
        if url.scheme != "https" or not url.hostname or url.path not in ("", "/") or url.query:
            raise KeycloakSettingsError(
                f"Keycloak's public URL must be https://HOST[:PORT] (the gateway's address), "
                f"found {self.public_url!r}"
            )
        try:
            address = ipaddress.ip_address(self.http_host)
        except ValueError:
            raise KeycloakSettingsError(
                f"http_host must be an IP address, found {self.http_host!r}"
            ) from None
        if address.is_unspecified:
            raise KeycloakSettingsError(
                f"Keycloak must listen on the internal address only, not {self.http_host}"
            )
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise KeycloakSettingsError(
                    f"trusted proxy {proxy!r} is not an address or network"
                ) from None
        if self.http_port == self.management_port:
            raise KeycloakSettingsError("the HTTP and management ports must differ")


def keycloak_artifacts(payload: Payload) -> tuple[ArtifactEntry, ArtifactEntry]:
    """The bundle's Keycloak distribution and Java runtime, or a clear refusal."""
    found = {a.name: a for a in payload.artifacts}
    missing = [n for n in (KEYCLOAK_ARTIFACT, JAVA_ARTIFACT) if n not in found]
    if missing:
        raise KeycloakArtifactError(
            f"bundle {payload.name!r} carries no {' and no '.join(missing)} artifact, so Keycloak "
            "cannot be installed from it",
            hint="Build the bundle with `artifact_sets: [keycloak.yaml]` in its recipe; "
            "bundles/keycloak.yaml says how to pin the Keycloak distribution (its publisher "
            "gives no SHA-256).",
        )
    for name in (KEYCLOAK_ARTIFACT, JAVA_ARTIFACT):
        if not found[name].path.endswith(".tar.gz"):
            raise KeycloakArtifactError(
                f"artifact {name!r} must be a .tar.gz archive, found {found[name].path!r}"
            )
    return found[KEYCLOAK_ARTIFACT], found[JAVA_ARTIFACT]


def build_digest(env: dict[str, str]) -> str:
    text = "\n".join(f"{k}={env[k]}" for k in sorted(env))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def template_vars(
    *,
    release_version: int,
    bundle_name: str,
    content_digest: str,
    realm_name: str,
    realm_digest: str,
    settings: KeycloakSettings,
    release_dir: str | None = None,
    etc_dir: str | None = None,
    keycloak_home: str | None = None,
    state_dir: str = STATE_DIR,
    admin_env_file: str = ADMIN_ENV_PATH,
    user: str = KEYCLOAK_USER,
) -> dict[str, Any]:
    """Everything the Keycloak unit and environment templates use; paths default to the layout."""
    settings.check()
    release_dir = release_dir or f"/opt/appliance/releases/{release_version}"
    etc_dir = etc_dir or f"/etc/appliance/releases/{release_version}"
    home = keycloak_home or f"{DIST_ROOT}/{release_version}"
    env = {
        **BUILD_OPTIONS,
        "KC_DB_URL": f"jdbc:h2:file:{state_dir}/h2/keycloakdb;NON_KEYWORDS=VALUE",
        "KC_HTTP_MANAGEMENT_PORT": str(settings.management_port),
        "KC_LOG": "console",
        **({"JAVA_OPTS_APPEND": settings.java_opts_append} if settings.java_opts_append else {}),
        **settings.extra_env,
    }
    for key, value in env.items():
        if "\n" in value or key.startswith("KC_BOOTSTRAP_ADMIN"):
            raise KeycloakSettingsError(
                f"{key} cannot go in the environment file (no secret, one line)"
            )
    build = build_digest({k: env[k] for k in BUILD_OPTIONS})
    kc = f"{home}/bin/kc.sh"
    realm_file = f"{home}/data/import/{realm_name}-realm.json"
    start = [
        kc, "start", "--optimized", "--import-realm",
        f"--hostname={settings.public_url.rstrip('/')}",
        "--hostname-backchannel-dynamic=true",
        "--http-enabled=true",
        f"--http-host={settings.http_host}",
        f"--http-port={settings.http_port}",
        "--proxy-headers=xforwarded",
        f"--proxy-trusted-addresses={','.join(settings.trusted_proxies)}",
    ]  # fmt: skip
    # Names prefixed keycloak_: the Ansible engine renders every template of a host with one
    # set of variables, shared with the model server's and the gateway's.
    return {
        "release_version": release_version,
        "bundle_name": bundle_name,
        "content_digest": content_digest,
        "keycloak_realm_name": realm_name,
        "keycloak_realm_digest": realm_digest,
        "keycloak_user": user,
        "keycloak_home": home,
        "keycloak_kc_sh": kc,
        "keycloak_java_home": f"{release_dir}/{JAVA_DIR}",
        "keycloak_state_dir": state_dir,
        "keycloak_env_file": f"{etc_dir}/{ENV_FILE_NAME}",
        "keycloak_admin_env_file": admin_env_file,
        "keycloak_build_marker": f"{home}/lib/quarkus/.appliance-built-{build}",
        "keycloak_import_marker": f"{state_dir}/realm-{realm_digest}.imported",
        "keycloak_realm_file": realm_file,
        "keycloak_exec_start": shlex.join(start),
        "keycloak_env_lines": "\n".join(f"{k}={v}" for k, v in env.items()),
        "keycloak_health_url": f"http://{settings.http_host}:{settings.management_port}/health/ready",
    }


def render_keycloak_files(variables: dict[str, Any], etc_dir: str) -> tuple[RenderedFile, ...]:
    """The unit and environment file of one release (no secret in either)."""
    from appliance.deploy.render import render

    return (
        RenderedFile(f"{etc_dir}/{UNIT_NAME}", UNIT_TEMPLATE, render(UNIT_TEMPLATE, variables)),
        RenderedFile(f"{etc_dir}/{ENV_FILE_NAME}", ENV_TEMPLATE, render(ENV_TEMPLATE, variables)),
    )

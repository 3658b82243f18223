"""Keycloak, added to a host's desired state when the site file says ``sso.install``.

``install_keycloak(desired, plan, verified, site, inventory)`` returns the
secured ``HostDesired`` (``gateway_layer.secure``) plus, from the bundle's
``keycloak`` and ``java-runtime`` artifacts (``bundles/keycloak.yaml``):

- the system user ``appliance-keycloak`` (no login) and its state directory
  (0700: the H2 database, the digest of the last imported realm);
- the Java runtime, already unpacked into the release by ``desired_state``
  (``runtime/java``, read-only like the rest of the release);
- the Keycloak distribution unpacked outside the release, under
  ``/var/lib/appliance/keycloak-dist/<v>``, root-owned but for the two
  directories Keycloak writes (``kc.sh build`` and its data);
- the realm generated from the plan and the site's access file, rendered with
  the callers' client secrets into an import file uploaded 0600 for the
  Keycloak user, and the bootstrap admin's environment file (0600, root):
  both are *secret files*, sent from the site's secrets directory on this
  machine (0700; generated there once, kept, never printed), never rendered
  by an engine, never in its variables or logs;
- the unit and environment file of ``appliance.deploy.keycloak_files``: build once,
  import when the realm changes, start optimised on the host's loopback,
  behind the gateway that relays the realm's public endpoints.

One Keycloak per site: a realm on each of several hosts would sign with
different keys, so an inventory with more than one model-server host is
refused rather than half-done.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from urllib.parse import urlsplit

from appliance.bundle.format import FILES_DIR
from appliance.bundle.site.verify import VerifiedBundle
from appliance.deploy.host_desired import DistSpec, HostDesired, OwnedDir, SecretFile, SystemUser
from appliance.deploy.host_layout import GATEWAY_UNIT, KEYCLOAK_UNIT, UNIT_NAME, release_etc
from appliance.deploy.site import Site
from appliance.errors import InputError
from appliance.plan.inventory import Inventory
from appliance.plan.report import Plan

__all__ = ["install_keycloak", "secrets_lines"]


def secrets_lines(keycloak: dict[str, str]) -> list[str]:
    """What a deploy says about the Keycloak it laid down: where its secrets are, never what."""
    return [
        f"Keycloak: issuer {keycloak['issuer']}",
        f"Keycloak's bootstrap admin password: in {keycloak['admin_password_file']} (0600; on "
        f"the host {keycloak['admin_password_file_on_host']}, 0600)",
        f"Callers' client secrets: in {keycloak['client_secrets_file']} (0600): hand each caller "
        "its own, out of band",
    ]


def install_keycloak(
    desired: HostDesired, plan: Plan, verified: VerifiedBundle, site: Site, inventory: Inventory
) -> HostDesired:
    """``desired`` (already secured) plus Keycloak, as ``site.config.sso.install`` asks."""
    from appliance.deploy.keycloak_files import (
        ADMIN_ENV_PATH,
        KEYCLOAK_USER,
        STATE_DIR,
        KeycloakSettings,
        keycloak_artifacts,
        render_keycloak_files,
        template_vars,
    )
    from appliance.keycloak.realm import (
        caller_ids,
        realm_digest,
        realm_for_plan,
        render_realm_import,
    )
    from appliance.keycloak.site_secrets import (
        ensure_admin_env,
        ensure_client_secrets,
        read_private,
        write_private,
    )

    sso = site.config.sso
    assert sso is not None and sso.install is not None
    assert site.access is not None and site.secrets_dir is not None
    hosts = inventory.with_role("model-server")
    if len(hosts) > 1:
        raise InputError(
            f"sso.install lays Keycloak down on one host; the inventory has {len(hosts)} "
            f"model-server hosts ({', '.join(h.name for h in hosts)})",
            hint="A realm on each host would sign tokens with different keys. Deploy Keycloak "
            "with a one-host inventory, or point the site at an existing Keycloak (sso without "
            "install).",
        )
    archive, _java = keycloak_artifacts(verified.payload)
    assert desired.unpacks, "desired_state unpacks the bundle's Java runtime into the release"
    realm = realm_for_plan(plan, site.access, verified.payload.adapters)
    secrets = ensure_client_secrets(site.secrets_dir, realm["realm"], caller_ids(realm))
    admin_env = ensure_admin_env(site.secrets_dir)
    text = render_realm_import(realm, secrets)
    import_copy = site.secrets_dir / f"{realm['realm']}-realm-import.json"
    write_private(import_copy, text)
    issuer = urlsplit(site.config.tokens.issuer)
    url = urlsplit(sso.url)
    settings = KeycloakSettings(
        public_url=f"{issuer.scheme}://{issuer.netloc}",
        http_host="127.0.0.1",
        http_port=url.port or 8180,
        management_port=sso.install.management_port,
        trusted_proxies=("127.0.0.1",),  # the gateway, on the same host
    )
    etc = release_etc(verified.version)
    variables = template_vars(
        release_version=verified.version,
        bundle_name=verified.name,
        content_digest=verified.content_digest[:16],
        realm_name=realm["realm"],
        realm_digest=realm_digest(text),  # of the import with its secrets: a new secret re-imports
        settings=settings,
        release_dir=desired.release_dir,
        etc_dir=etc,
    )
    clash = {k for k in variables if desired.template_vars.get(k, variables[k]) != variables[k]}
    assert not clash, f"Keycloak's template variables would replace others: {sorted(clash)}"
    home = variables["keycloak_home"]

    def sha256(data: str) -> str:
        return hashlib.sha256(data.encode()).hexdigest()

    secret_files = (
        SecretFile(variables["keycloak_realm_file"], import_copy, sha256(text), KEYCLOAK_USER),
        SecretFile(ADMIN_ENV_PATH, admin_env, sha256(read_private(admin_env, "admin env file"))),
    )
    return replace(
        desired,
        rendered=desired.rendered + render_keycloak_files(variables, etc),
        units=(UNIT_NAME, KEYCLOAK_UNIT, GATEWAY_UNIT),
        template_vars=desired.template_vars | variables,
        users=(SystemUser(KEYCLOAK_USER, STATE_DIR),),
        owned_dirs=(
            OwnedDir(STATE_DIR, KEYCLOAK_USER, 0o700),
            OwnedDir(ADMIN_ENV_PATH.rsplit("/", 1)[0], "root", 0o700),
        ),
        dists=(
            DistSpec(
                f"{desired.release_dir}/{FILES_DIR}/{archive.path}",
                home,
                KEYCLOAK_USER,
                ("lib/quarkus", "data", "data/import"),
                private=("data",),  # where the realm import (secrets) goes
            ),
        ),
        secret_files=secret_files,
        keycloak_health=variables["keycloak_health_url"],
        keycloak={
            "issuer": site.config.tokens.issuer,
            "admin_password_file": str(admin_env),
            "admin_password_file_on_host": ADMIN_ENV_PATH,
            "client_secrets_file": str(secrets.path),
        },
    )

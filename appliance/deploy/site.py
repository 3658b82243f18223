"""The site file: what a deploy needs to know about the site to lay down the gateway and firewall.

``appliance deploy --site FILE``. Without it the deploy lays down the model
server alone, listening on each host's loopback (reachable only through SSH).
With it, every model-server host also gets the authenticating gateway (the
only listener users reach, TLS on port 8443) and the host's nftables ruleset
from the policy model (``appliance.netpolicy``): default drop in and out,
the listed flows allowed, nothing to addresses outside the site.

Format (YAML, one strict schema: unknown keys, keys given twice and wrong
types are refused)::

    schema_version: 1
    network:
      site_cidrs: [10.20.0.0/16]        # the site's networks: the gateway's clients
      admin_cidrs: [10.20.9.0/24]       # the operators' SSH; inside the site
    tokens:                             # who issues the tokens the gateway accepts
      issuer: https://sso.site.example/realms/appliance   # exact `iss`
      audience: appliance-api           # the realm's API client (default)
      jwks_url: https://sso.site.example/realms/appliance/protocol/openid-connect/certs
      jwks_ca_file: site-ca.pem         # CA of jwks_url (default: the system's)
      jwks_file: realm-jwks.json        # and/or the realm's keys saved as a file
    gateway:
      log_prompts: false                # true records prompts in the gateway's audit log
      rate_limit: {requests_per_s: 5, burst: 20}   # per calling client
    sso:                                # optional: Keycloak behind the gateway, which relays
      url: http://127.0.0.1:8180        # callers' discovery, key-set and token requests to it
      realm: appliance                  # (the issuer is then https://<gateway>/realms/<realm>)
      install:                          # optional: the deploy lays Keycloak down from the bundle
        access_file: access.yaml        # callers and what each may call (docs/keycloak.md)
        secrets_dir: secrets            # on this machine, kept 0700: the callers' client secrets
                                        # and Keycloak's bootstrap admin, generated here, 0600

Relative paths resolve against the site file's directory. Files named here
are read when the deploy plans (a missing or malformed one stops it before
any host is touched) and laid down on the hosts with the release's
configuration. The file holds no secret: the realm's keys are public, the
gateway's TLS key is made on the host (or placed there by the site), never
sent from here. With ``sso.install`` the secrets are generated on this
machine into ``secrets_dir`` (0700, files 0600; existing ones kept) and sent
to the host only as files (0600), never as arguments or in a log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from appliance.errors import InputError
from appliance.input_files import parse_json, read_text_input
from appliance.keycloak.access import AccessConfig
from appliance.yaml_files import load_model

DOC = "appliance/deploy/site.py and docs/gateway.md"
MAX_SITE_FILE = 1024 * 1024  # a key set or CA file larger than this is not one


class SiteFileError(InputError):
    """The site file, or a file it names, is not what a deploy can use."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SiteNetwork(_Strict):
    site_cidrs: Annotated[list[str], Field(min_length=1)]
    admin_cidrs: Annotated[list[str], Field(min_length=1)]


class SiteTokens(_Strict):
    issuer: Annotated[str, Field(min_length=1)]
    audience: Annotated[str, Field(min_length=1)] = "appliance-api"
    jwks_url: str | None = None
    jwks_ca_file: str | None = None
    jwks_file: str | None = None

    @model_validator(mode="after")
    def _some_keys(self) -> SiteTokens:
        if self.jwks_url is None and self.jwks_file is None:
            raise ValueError(
                "give jwks_url (the realm's certs URL on the site network) or jwks_file "
                "(the realm's keys saved as a file), or both"
            )
        if self.jwks_ca_file is not None and self.jwks_url is None:
            raise ValueError("jwks_ca_file is the CA of jwks_url, which is not set")
        return self


class SiteRateLimit(_Strict):
    requests_per_s: Annotated[float, Field(gt=0, le=100_000)] = 5.0
    burst: Annotated[int, Field(ge=1, le=100_000)] = 20


class SiteGateway(_Strict):
    log_prompts: bool = False
    rate_limit: SiteRateLimit = SiteRateLimit()


class SiteKeycloakInstall(_Strict):
    access_file: Annotated[str, Field(min_length=1)]
    secrets_dir: Annotated[str, Field(min_length=1)] = "secrets"
    management_port: Annotated[int, Field(ge=1, le=65535)] = 9000  # /health/ready, loopback


class SiteSso(_Strict):
    url: str = "http://127.0.0.1:8180"  # Keycloak's internal listener, as the gateway reaches it
    realm: str = "appliance"
    install: SiteKeycloakInstall | None = None


class SiteConfig(_Strict):
    schema_version: Literal[1]
    network: SiteNetwork
    tokens: SiteTokens
    gateway: SiteGateway = SiteGateway()
    sso: SiteSso | None = None


@dataclass(frozen=True, slots=True)
class Site:
    """A loaded site file: its settings and the content of the files it names."""

    path: Path
    config: SiteConfig
    jwks: str | None  # the realm's key set, as laid down on the hosts
    jwks_ca: str | None
    access: AccessConfig | None = None  # with sso.install: who may call what
    secrets_dir: Path | None = None  # with sso.install: where the site's secrets are (0700)


_NAMED_FILES = {"jwks_file": "JSON Web Key Set", "jwks_ca_file": "CA certificates"}


def _read(base: Path, name: str, key: str) -> tuple[Path, str]:
    path = base / Path(name).expanduser()  # an absolute name stays absolute
    try:
        text = read_text_input(path, _NAMED_FILES[key], limit=MAX_SITE_FILE, error=SiteFileError)
    except SiteFileError as exc:
        raise SiteFileError(
            f"tokens.{key}: {exc.message}",
            hint=f"{exc.hint or ''} Paths in the site file are relative to its directory.".strip(),
        ) from exc
    return path, text


def _check_jwks(path: Path, text: str) -> str:
    try:
        data = parse_json(text, f"tokens.jwks_file: {path}", error=SiteFileError)
    except SiteFileError as exc:
        exc.hint = "Expected a JSON Web Key Set: save the realm's certs URL document unchanged."
        raise
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys:
        raise SiteFileError(
            f"tokens.jwks_file: {path}: expected a JSON object with a non-empty `keys` list "
            "(the realm's .../protocol/openid-connect/certs document)"
        )
    if any(isinstance(k, dict) and ("d" in k or k.get("kty") == "oct") for k in keys):
        raise SiteFileError(
            f"tokens.jwks_file: {path}: holds private or symmetric key material; expected the "
            "realm's public keys only",
            hint="Save the realm's certs URL document, never a key export.",
        )
    # Laid down in a canonical form, so the same key set always renders the same file.
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def load_site(path: Path) -> Site:
    """Read and check the site file and the files it names; raises ``SiteFileError``."""
    config = load_model(
        path,
        SiteConfig,
        "site file",
        SiteFileError,
        expected="schema_version, network and tokens",
        doc=DOC,
    )
    base = path.resolve().parent
    tokens = config.tokens
    jwks = None
    if tokens.jwks_file is not None:
        jwks = _check_jwks(*_read(base, tokens.jwks_file, "jwks_file"))
    jwks_ca = None
    if tokens.jwks_ca_file is not None:
        ca_path, jwks_ca = _read(base, tokens.jwks_ca_file, "jwks_ca_file")
        if "-----BEGIN CERTIFICATE-----" not in jwks_ca:
            raise SiteFileError(
                f"tokens.jwks_ca_file: {ca_path}: expected PEM certificates, found none"
            )
    if config.sso is None or config.sso.install is None:
        return Site(path, config, jwks, jwks_ca)
    access = _check_install(config, config.sso, config.sso.install, base)
    return Site(path, config, jwks, jwks_ca, access, base / config.sso.install.secrets_dir)


def _check_install(
    config: SiteConfig, sso: SiteSso, install: SiteKeycloakInstall, base: Path
) -> AccessConfig:
    """What laying Keycloak down needs of the rest of the site file; the access file, loaded."""
    from urllib.parse import urlsplit

    from appliance.keycloak.access import load_access

    def refuse(problem: str, hint: str) -> SiteFileError:
        return SiteFileError(f"sso.install: {problem}", hint=hint)

    url = urlsplit(sso.url)
    try:
        port = url.port
    except ValueError:  # not a port number
        port = None
    if url.scheme != "http" or url.hostname != "127.0.0.1" or port is None or url.path.strip("/"):
        raise refuse(
            f"expected sso.url http://127.0.0.1:PORT (Keycloak laid down on the gateway's host "
            f"listens on its loopback), found {sso.url!r}",
            "Set sso.url to http://127.0.0.1:8180.",
        )
    if port == install.management_port:
        raise refuse(
            f"Keycloak's HTTP port and management port are both {port}",
            "Use another sso.install.management_port (default 9000).",
        )
    issuer = urlsplit(config.tokens.issuer)
    expected = f"{issuer.scheme}://{issuer.netloc}/realms/{sso.realm}"
    if issuer.scheme != "https" or not issuer.hostname or config.tokens.issuer != expected:
        raise refuse(
            f"expected tokens.issuer https://GATEWAY[:PORT]/realms/{sso.realm} (Keycloak's issuer "
            f"as callers reach it, through the gateway), found {config.tokens.issuer!r}",
            "Set tokens.issuer to the gateway's address followed by /realms/<realm>.",
        )
    certs = f"{sso.url.rstrip('/')}/realms/{sso.realm}/protocol/openid-connect/certs"
    if config.tokens.jwks_url != certs:
        raise refuse(
            f"expected tokens.jwks_url {certs} (the keys of the Keycloak laid down here), "
            f"found {config.tokens.jwks_url!r}",
            "A realm's keys are made by Keycloak at its first start: the gateway reads them "
            "from its certs URL.",
        )
    access = load_access(base / install.access_file)
    if access.realm != sso.realm:
        raise refuse(
            f"the access file {install.access_file} is for realm {access.realm!r}, "
            f"sso.realm is {sso.realm!r}",
            "Make them the same realm.",
        )
    if access.api_client != config.tokens.audience:
        raise refuse(
            f"the access file's api_client is {access.api_client!r}, tokens.audience is "
            f"{config.tokens.audience!r}",
            "The gateway accepts tokens for the realm's API client: make them the same.",
        )
    return access

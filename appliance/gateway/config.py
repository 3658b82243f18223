"""The gateway's configuration: one strict file (YAML or JSON), refused whole if anything is off.

Invariants enforced here, so no code path can run with them broken:
- only asymmetric signature algorithms are accepted (never ``none``, never a
  shared-secret ``HS*``: a public key must not become an HMAC secret);
- the clock-skew leeway is bounded (at most ``MAX_LEEWAY_S``);
- every model or adapter is granted by exactly one role;
- ``served`` names what the model server serves: base models, and each LoRA adapter
  with its parent (a served base model); every granted name is served. A config
  without ``served`` is refused with a hint saying what to add (``NO_SERVED_HINT``);
- the upstream URL carries no credentials (the upstream key comes from a file);
- prompts are not logged unless ``audit.log_prompts`` says so.
The format is documented in docs/gateway.md.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from appliance.errors import InputError
from appliance.input_files import parse_json, read_input
from appliance.yaml_files import load_yaml, validate_model

CONFIG_SCHEMA_VERSION = 1
DOC = "docs/gateway.md"
MAX_LEEWAY_S = 120

# Asymmetric JWS algorithms PyJWT verifies with `cryptography`. Keycloak signs access
# tokens with RS256 by default.
ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip


class GatewayConfigError(InputError):
    """The gateway configuration file is unreadable or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listen(_Strict):
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=1, le=65535)] = 8443


class Tls(_Strict):
    """Site-provided files, or made once by ``python -m appliance.gateway generate-cert``."""

    cert_file: Path
    key_file: Path


def _base_url(value: str, added: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise ValueError("the URL must not carry credentials")
    if parts.query or parts.fragment:
        raise ValueError("the URL must not have a query or fragment")
    if parts.path not in ("", "/"):
        raise ValueError(f"give the server's base URL; the gateway adds `{added}` itself")
    return value.rstrip("/")


class _Service(_Strict):
    """A server the gateway talks to, named by its base URL (``url``)."""

    url: str
    _section: ClassVar[str]
    _added: ClassVar[str]  # what the gateway appends to the base URL
    _credentials_hint: ClassVar[str] = ""

    @field_validator("url")
    @classmethod
    def _plain_http_url(cls, value: str) -> str:
        return _base_url(value, cls._added)

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        # Before the field check, so the message never echoes the URL (and its password).
        url = data.get("url") if isinstance(data, dict) else None
        if isinstance(url, str) and "@" in urlsplit(url).netloc:
            raise ValueError(
                f"`{cls._section}.url` must not carry credentials{cls._credentials_hint}"
            )
        return data


class Upstream(_Service):
    """The model server (llama.cpp or vLLM OpenAI routes), on loopback or the internal network."""

    url: str = "http://127.0.0.1:8081"
    # The model server's own API key (`--api_key` / `--api-key`), read from this file;
    # the caller's token is never forwarded.
    api_key_file: Path | None = None
    connect_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    # Between two chunks of a response: a long generation is fine, a silent server is not.
    read_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 300.0
    max_connections: Annotated[int, Field(ge=1, le=10_000)] = 256

    _section: ClassVar[str] = "upstream"
    _added: ClassVar[str] = "/v1/..."
    _credentials_hint: ClassVar[str] = " (put the model server's key in `api_key_file`)"

    @property
    def is_loopback(self) -> bool:
        host = urlsplit(self.url).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


class Sso(_Service):
    """Keycloak behind the gateway: callers' discovery, key and token requests are relayed to it.

    Only the realm's three public endpoints are relayed (``/realms/<realm>/...``:
    ``.well-known/openid-configuration``, ``protocol/openid-connect/certs``,
    ``protocol/openid-connect/token``); Keycloak's admin console and every other
    path stay unreachable from the site network.
    """

    url: str = "http://127.0.0.1:8180"  # Keycloak's internal HTTP listener (KEYCLOAK_PORT)
    realm: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] = "appliance"
    connect_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    read_timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0
    max_body_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 16 * 1024

    _section: ClassVar[str] = "sso"
    _added: ClassVar[str] = "/realms/..."


class Tokens(_Strict):
    """How bearer tokens are validated: offline, against the realm's JWKS."""

    issuer: Annotated[str, Field(min_length=1)]  # e.g. https://sso.site/realms/appliance
    audience: Annotated[str, Field(min_length=1)]  # the API client id (Keycloak audience mapper)
    jwks_file: Path | None = None
    jwks_url: str | None = None  # the realm's .../protocol/openid-connect/certs
    jwks_ca_file: Path | None = None  # CA of the internal certs URL (default: system CAs)
    # An unknown key id triggers a refresh at most this often (no refresh storms).
    jwks_refresh_interval_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    # Keys are re-read after this long, so a key the realm rotated out stops being accepted.
    jwks_max_age_s: Annotated[float, Field(ge=10, le=86_400)] = 300.0
    algorithms: tuple[str, ...] = ("RS256",)
    leeway_s: Annotated[int, Field(ge=0, le=MAX_LEEWAY_S)] = 30
    max_token_bytes: Annotated[int, Field(ge=512, le=65_536)] = 8192
    # exp - iat above this is refused (a token valid for a year is a stolen credential waiting).
    max_lifetime_s: Annotated[int, Field(ge=60, le=7 * 86_400)] = 86_400
    # Where the caller's roles are: a path of claim names. Default (null): Keycloak's client
    # roles of the audience client, resource_access.<audience>.roles.
    roles_claim: tuple[str, ...] | None = None
    client_id_claim: Annotated[str, Field(min_length=1)] = "azp"

    @field_validator("algorithms")
    @classmethod
    def _only_asymmetric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one algorithm (Keycloak signs with RS256)")
        for alg in value:
            if alg.lower() == "none":
                raise ValueError("`none` means unsigned tokens and is never accepted")
            if alg.upper().startswith("HS"):
                raise ValueError(
                    f"{alg} is a shared-secret algorithm: a gateway that accepts it can be fooled"
                    " with a token signed using the realm's public key as the secret;"
                    f" use one of {', '.join(ASYMMETRIC_ALGORITHMS)}"
                )
            if alg not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(
                    f"unknown algorithm {alg!r}: expected one of {', '.join(ASYMMETRIC_ALGORITHMS)}"
                )
        if len(set(value)) != len(value):
            raise ValueError("an algorithm is listed twice")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("roles_claim")
    @classmethod
    def _roles_path(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (not value or not all(value)):
            raise ValueError("expected a non-empty list of claim names, e.g. [realm_access, roles]")
        return value

    @model_validator(mode="after")
    def _a_key_source(self) -> Tokens:
        if self.jwks_file is None and self.jwks_url is None:
            raise ValueError(
                "give `jwks_file` (the realm's keys saved on site) and/or `jwks_url`"
                " (the realm's certs URL on the internal network)"
            )
        return self

    @property
    def roles_path(self) -> tuple[str, ...]:
        return self.roles_claim or ("resource_access", self.audience, "roles")


class RateLimit(_Strict):
    """A token bucket: ``burst`` requests at once, refilled at ``requests_per_s``."""

    requests_per_s: Annotated[float, Field(gt=0, le=100_000)]
    burst: Annotated[int, Field(ge=1, le=100_000)]


class RateLimits(_Strict):
    default: RateLimit = RateLimit(requests_per_s=5, burst=20)
    clients: dict[str, RateLimit] = {}  # client id -> its own bucket
    # Per peer address, spent only by requests whose token was refused (401): past it, the
    # address is answered 429 before its token is parsed.
    refused_per_address: RateLimit = RateLimit(requests_per_s=1, burst=30)

    def for_client(self, client_id: str) -> RateLimit:
        return self.clients.get(client_id, self.default)


class Access(_Strict):
    """Which role grants which models and adapters (the ``model`` field of a request)."""

    roles: dict[str, tuple[str, ...]]

    @model_validator(mode="after")
    def _one_role_per_model(self) -> Access:
        granted: dict[str, str] = {}
        for role, models in self.roles.items():
            if not role:
                raise ValueError("a role name is empty")
            if not models:
                raise ValueError(f"role {role!r} grants no model")
            for model in models:
                if model in granted:
                    raise ValueError(
                        f"model {model!r} is granted by two roles ({granted[model]!r} and {role!r}):"
                        " give each model and adapter exactly one role"
                    )
                granted[model] = role
        return self

    def models_for(self, roles: frozenset[str]) -> frozenset[str]:
        return frozenset(m for role in roles & self.roles.keys() for m in self.roles[role])


ServedName = Annotated[str, Field(min_length=1, max_length=128)]


class Served(_Strict):
    """What the model server serves: base models by served name, LoRA adapters with their parent.

    The gateway's source of truth for ``GET /v1/models`` (an adapter's ``parent``) and
    for the audit (``base``, ``adapter``), whatever the model server says.
    """

    models: Annotated[tuple[ServedName, ...], Field(min_length=1)]
    adapters: dict[ServedName, ServedName] = {}  # adapter name -> its base model's served name

    @model_validator(mode="after")
    def _parents_are_served(self) -> Served:
        repeated = sorted({m for m in self.models if self.models.count(m) > 1})
        if repeated:
            raise ValueError(f"`models` lists {', '.join(map(repr, repeated))} twice")
        for adapter, parent in self.adapters.items():
            if adapter in self.models:
                raise ValueError(
                    f"{adapter!r} is both a base model and an adapter: give each name one kind"
                )
            if parent not in self.models:
                raise ValueError(
                    f"adapter {adapter!r} names parent {parent!r}, which `served.models` does not"
                    f" list (served models: {', '.join(self.models)}); an adapter runs on a base"
                    " model the model server serves: add that model or fix the adapter's parent"
                )
        return self

    def names(self) -> frozenset[str]:
        return frozenset(self.models) | self.adapters.keys()

    def resolve(self, name: str | None) -> tuple[str | None, str | None]:
        """``(base, adapter)`` that serve a request for ``name``: ``(name, None)`` for a base
        model, ``(parent, name)`` for an adapter, ``(None, None)`` for a name not served."""
        if name is None:
            return None, None
        if name in self.adapters:
            return self.adapters[name], name
        return (name, None) if name in self.models else (None, None)


class Limits(_Strict):
    """What one client may hold: body size, time to send a request, connections (docs/gateway.md)."""

    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 4 * 1024 * 1024
    # The TLS handshake, then the request line and headers, each within this (slowloris).
    header_timeout_s: Annotated[float, Field(ge=0.5, le=300)] = 10.0
    # The whole body, from the end of the headers; an unfinished body is answered 408.
    body_timeout_s: Annotated[float, Field(ge=0.5, le=3600)] = 60.0
    # Open connections at once, in total and per client address; past a cap a connection
    # may only ask GET /healthz (one per address, `health_connections` in all).
    max_connections: Annotated[int, Field(ge=1, le=100_000)] = 1024
    max_connections_per_address: Annotated[int, Field(ge=1, le=100_000)] = 64
    health_connections: Annotated[int, Field(ge=1, le=1000)] = 16

    @model_validator(mode="after")
    def _caps_nest(self) -> Limits:
        if self.max_connections_per_address > self.max_connections:
            raise ValueError(
                "`max_connections_per_address` must not exceed `max_connections`"
                f" ({self.max_connections_per_address} > {self.max_connections})"
            )
        return self


class Audit(_Strict):
    path: Path = Path("/var/log/appliance/gateway-audit.jsonl")
    log_prompts: bool = False
    fsync_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    fsync_batch: Annotated[int, Field(ge=1, le=100_000)] = 64
    # With log_prompts: a prompt whose JSON is longer is recorded cut, as a string.
    max_prompt_bytes: Annotated[int, Field(ge=256, le=16 * 1024 * 1024)] = 64 * 1024
    # Connection refusals and cuts (caps, timeouts) are counted and written as one summary
    # record per interval at most, so a flood cannot fill the log through them.
    connection_report_interval_s: Annotated[float, Field(ge=0.5, le=3600)] = 60.0


class Group(_Strict):
    """The multi-node group the model server is the head of (docs/gateway.md): calls are
    answered 503 ``group_unavailable`` while its watch does not report it serving."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
    state_file: Path = Path("/run/appliance/group-state.json")


class GatewayConfig(_Strict):
    schema_version: Literal[1]
    listen: Listen = Listen()
    tls: Tls
    upstream: Upstream = Upstream()
    tokens: Tokens
    served: Served
    access: Access
    rate_limits: RateLimits = RateLimits()
    limits: Limits = Limits()
    audit: Audit = Audit()
    sso: Sso | None = None  # relay callers' token requests to Keycloak (docs/gateway.md)
    group: Group | None = None  # the model server heads a multi-node group

    @model_validator(mode="after")
    def _granted_is_served(self) -> GatewayConfig:
        served = self.served.names()
        for role, names in self.access.roles.items():
            missing = [n for n in names if n not in served]
            if missing:
                raise ValueError(
                    f"role {role!r} grants {', '.join(map(repr, missing))}, which `served` does"
                    f" not list (served: {', '.join(sorted(served))}); grant only what the model"
                    " server serves, or add it to `served`"
                )
        return self


NO_SERVED_HINT = (
    "The gateway must know what the model server serves, to list each LoRA adapter with its"
    " base model and to record in the audit which base model or adapter answered a call: add"
    " `served: {models: [<base model served names>], adapters: {<adapter>: <its base model>}}`"
    " (`appliance deploy` renders it from the plan and the bundle)."
)


def parse_config(data: Any, source: str = "gateway config") -> GatewayConfig:
    """A validated config from parsed YAML/JSON; every problem in one message.

    A config without ``served`` (written before the gateway knew adapters) is refused like
    any config missing a required key, with a hint saying what to add.
    """
    try:
        return validate_model(data, GatewayConfig, "gateway config", GatewayConfigError,
                              source=source, doc=DOC,
                              expected="schema_version, tls, tokens, served and access")  # fmt: skip
    except GatewayConfigError as exc:
        if isinstance(data, dict) and "served" not in data:
            raise GatewayConfigError(
                exc.message, hint=f"{NO_SERVED_HINT} {exc.hint or ''}".strip()
            ) from exc
        raise


def load_config(path: Path) -> GatewayConfig:
    """Read ``path`` (``.json`` as JSON, anything else as strict YAML) and validate it.

    Read through ``read_input``: a FIFO, device or directory, or a file over 1 MiB, is a
    ``GatewayConfigError`` (exit 2), never a hang; JSON is parsed strictly and bounded.
    """
    if path.suffix == ".json":
        raw = read_input(path, "gateway config", error=GatewayConfigError)
        data = parse_json(raw, f"{path}", error=GatewayConfigError)
    else:
        data = load_yaml(path, "gateway config", GatewayConfigError)
    return parse_config(data, str(path))

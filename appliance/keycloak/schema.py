"""The subset of Keycloak's ``RealmRepresentation`` the appliance emits, as one strict model.

Field names are Keycloak's own (``org.keycloak.representations.idm``:
``RealmRepresentation``, ``ClientRepresentation``, ``UserRepresentation``,
``RoleRepresentation``, ``ProtocolMapperRepresentation``), so a realm that
validates here is a realm import file Keycloak 26 reads. The model is the
structural check of issue 6 (Keycloak cannot run on this machine): unknown
keys are refused, and every security setting the appliance relies on is a
``Literal`` (``sslRequired: all``, no registration, brute-force protection on,
the API client bearer-only, callers confidential with client credentials only).
Cross-field rules (one API client, its roles, one service account per caller
granted only existing roles, the audience mapper on every caller) are in
``Realm._rules``.

Client secrets: absent from the realm the appliance generates (``validate_realm(
..., secrets="absent")``), present in the import rendered on site
(``secrets="present"``). They are ``SecretStr``: neither a repr nor a validation
message ever shows one.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    model_validator,
)

from appliance.keycloak.access import (
    MAX_ACCESS_TOKEN_LIFESPAN,
    MIN_ACCESS_TOKEN_LIFESPAN,
    ClientId,
    Environment,
    RealmName,
)
from appliance.keycloak.errors import RealmError

AUDIENCE_MAPPER = "oidc-audience-mapper"
SERVICE_ACCOUNT_PREFIX = "service-account-"
ENVIRONMENT_ATTRIBUTE = "appliance.environment"
API_CLIENT_ATTRIBUTE = "appliance.api-client"
GENERATOR_ATTRIBUTE = "appliance.generated-by"
RoleName = Annotated[str, Field(pattern=r"^(model|adapter):[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
SECRET_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
MIN_SECRET_LENGTH = 32


def _secret_shape(value: SecretStr) -> SecretStr:
    text = value.get_secret_value()
    # The message never includes the value. The alphabet also keeps "${" out, which
    # Keycloak's import would treat as an environment placeholder.
    if not MIN_SECRET_LENGTH <= len(text) <= 256 or not SECRET_ALPHABET.issuperset(text):
        raise ValueError(
            f"a client secret must be {MIN_SECRET_LENGTH} to 256 characters of A-Z a-z 0-9 - _ "
            "(as appliance.keycloak.site_secrets generates them)"
        )
    return value


ClientSecret = Annotated[SecretStr, AfterValidator(_secret_shape)]
BoolText = Literal["true", "false"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=False)


class AudienceMapperConfig(_Strict):
    included_client_audience: ClientId = Field(alias="included.client.audience")
    id_token_claim: Literal["false"] = Field(alias="id.token.claim")
    access_token_claim: Literal["true"] = Field(alias="access.token.claim")
    introspection_token_claim: Literal["true"] = Field(alias="introspection.token.claim")


class ProtocolMapper(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=255)]
    protocol: Literal["openid-connect"]
    protocolMapper: Literal["oidc-audience-mapper"]
    config: AudienceMapperConfig


class Role(_Strict):
    name: RoleName
    description: Annotated[str, Field(max_length=255)]
    composite: Literal[False]
    clientRole: Literal[True]


class Roles(_Strict):
    client: dict[ClientId, list[Role]]


class ApiClient(_Strict):
    """The audience: bearer-only, no flow of its own, carries one role per model and adapter."""

    clientId: ClientId
    name: str
    description: str
    enabled: Literal[True]
    bearerOnly: Literal[True]
    publicClient: Literal[False]
    standardFlowEnabled: Literal[False]
    implicitFlowEnabled: Literal[False]
    directAccessGrantsEnabled: Literal[False]
    serviceAccountsEnabled: Literal[False]
    protocol: Literal["openid-connect"]
    fullScopeAllowed: Literal[False]
    frontchannelLogout: Literal[False]
    attributes: dict[str, str]


class CallerAttributes(_Strict):
    use_refresh_token: Literal["false"] = Field(alias="client_credentials.use_refresh_token")


class CallerClient(_Strict):
    """A confidential client whose service account obtains tokens by client credentials only."""

    clientId: ClientId
    name: str
    description: str
    enabled: bool
    bearerOnly: Literal[False]
    publicClient: Literal[False]
    clientAuthenticatorType: Literal["client-secret"]
    secret: ClientSecret | None = None
    standardFlowEnabled: Literal[False]
    implicitFlowEnabled: Literal[False]
    directAccessGrantsEnabled: Literal[False]
    serviceAccountsEnabled: Literal[True]
    protocol: Literal["openid-connect"]
    fullScopeAllowed: Literal[True]
    frontchannelLogout: Literal[False]
    redirectUris: Annotated[list[str], Field(max_length=0)]
    webOrigins: Annotated[list[str], Field(max_length=0)]
    defaultClientScopes: list[Literal["basic", "roles"]]
    optionalClientScopes: Annotated[list[str], Field(max_length=0)]
    attributes: CallerAttributes
    protocolMappers: Annotated[list[ProtocolMapper], Field(min_length=1)]


def _client_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "api" if value.get("bearerOnly") is True else "caller"
    return "api" if getattr(value, "bearerOnly", False) is True else "caller"


Client = Annotated[
    Annotated[ApiClient, Tag("api")] | Annotated[CallerClient, Tag("caller")],
    Discriminator(_client_kind),
]


class ServiceAccountUser(_Strict):
    username: Annotated[str, Field(pattern=r"^service-account-[a-z0-9][a-z0-9-]{0,62}$")]
    enabled: Literal[True]
    serviceAccountClientId: ClientId
    clientRoles: dict[ClientId, list[RoleName]]


class RealmAttributes(_Strict):
    environment: Environment = Field(alias="appliance.environment")
    api_client: ClientId = Field(alias="appliance.api-client")
    generated_by: str = Field(alias="appliance.generated-by")


class Realm(_Strict):
    realm: RealmName
    displayName: str
    enabled: Literal[True]
    sslRequired: Literal["all"]
    registrationAllowed: Literal[False]
    registrationEmailAsUsername: Literal[False]
    rememberMe: Literal[False]
    verifyEmail: Literal[False]
    loginWithEmailAllowed: Literal[False]
    duplicateEmailsAllowed: Literal[False]
    resetPasswordAllowed: Literal[False]
    editUsernameAllowed: Literal[False]
    bruteForceProtected: Literal[True]
    permanentLockout: Literal[False]
    failureFactor: Annotated[int, Field(ge=1, le=30)]
    waitIncrementSeconds: Annotated[int, Field(ge=1)]
    maxFailureWaitSeconds: Annotated[int, Field(ge=1)]
    minimumQuickLoginWaitSeconds: Annotated[int, Field(ge=1)]
    quickLoginCheckMilliSeconds: Annotated[int, Field(ge=1)]
    maxDeltaTimeSeconds: Annotated[int, Field(ge=1)]
    accessTokenLifespan: Annotated[
        int, Field(ge=MIN_ACCESS_TOKEN_LIFESPAN, le=MAX_ACCESS_TOKEN_LIFESPAN)
    ]
    accessCodeLifespan: Annotated[int, Field(ge=1, le=600)]
    ssoSessionIdleTimeout: Annotated[int, Field(ge=60)]
    ssoSessionMaxLifespan: Annotated[int, Field(ge=60)]
    revokeRefreshToken: Literal[True]
    refreshTokenMaxReuse: Literal[0]
    defaultSignatureAlgorithm: Literal["RS256"]
    attributes: RealmAttributes
    roles: Roles
    clients: Annotated[list[Client], Field(min_length=2)]
    users: list[ServiceAccountUser]

    @model_validator(mode="after")
    def _rules(self) -> Realm:
        apis = [c for c in self.clients if isinstance(c, ApiClient)]
        callers = [c for c in self.clients if isinstance(c, CallerClient)]
        if len(apis) != 1:
            raise ValueError(f"expected exactly one bearer-only API client, found {len(apis)}")
        api = apis[0].clientId
        if self.attributes.api_client != api:
            raise ValueError(
                f"attributes.{API_CLIENT_ATTRIBUTE} is {self.attributes.api_client!r}, "
                f"but the bearer-only client is {api!r}"
            )
        ids = [c.clientId for c in self.clients]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"client ids must be unique; repeated: {', '.join(dupes)}")
        if set(self.roles.client) != {api}:
            raise ValueError(
                f"roles.client must hold the API client {api!r} only, found {sorted(self.roles.client)}"
            )
        role_names = [r.name for r in self.roles.client[api]]
        if not role_names:
            raise ValueError(f"the API client {api!r} has no role: nothing could be called")
        if len(set(role_names)) != len(role_names):
            raise ValueError("role names of the API client must be unique")
        for caller in callers:
            audiences = {m.config.included_client_audience for m in caller.protocolMappers}
            if api not in audiences:
                raise ValueError(
                    f"caller {caller.clientId!r} has no {AUDIENCE_MAPPER} for {api!r}: its tokens "
                    "would not carry the API client in aud"
                )
        by_client = {u.serviceAccountClientId: u for u in self.users}
        if len(by_client) != len(self.users) or set(by_client) != {c.clientId for c in callers}:
            raise ValueError(
                "expected exactly one service-account user per caller client; callers "
                f"{sorted(c.clientId for c in callers)}, service accounts {sorted(by_client)}"
            )
        for client_id, user in by_client.items():
            if user.username != SERVICE_ACCOUNT_PREFIX + client_id:
                raise ValueError(
                    f"the service account of {client_id!r} must be named "
                    f"{SERVICE_ACCOUNT_PREFIX + client_id!r}, found {user.username!r}"
                )
            if set(user.clientRoles) - {api}:
                raise ValueError(f"{user.username} holds roles of clients other than {api!r}")
            unknown = sorted(set(user.clientRoles.get(api, [])) - set(role_names))
            if unknown:
                raise ValueError(f"{user.username} is granted roles {api!r} lacks: {unknown}")
        return self

    @property
    def api_client(self) -> ApiClient:
        return next(c for c in self.clients if isinstance(c, ApiClient))

    @property
    def callers(self) -> tuple[CallerClient, ...]:
        return tuple(c for c in self.clients if isinstance(c, CallerClient))

    def roles_of(self, client_id: str) -> tuple[str, ...]:
        """The API client's roles granted to ``client_id``'s service account."""
        api = self.api_client.clientId
        for user in self.users:
            if user.serviceAccountClientId == client_id:
                return tuple(user.clientRoles.get(api, []))
        return ()


SecretsMode = Literal["absent", "present"]


def _messages(exc: ValidationError) -> str:
    # Only where and what: pydantic's "input" may be a secret, so it is never shown.
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        lines.append(f"  - {where}: {error['msg']}")
    return "\n".join(lines)


def validate_realm(data: Any, *, secrets: SecretsMode, where: str = "realm") -> Realm:
    """``data`` (a parsed realm import) as a ``Realm``, or ``RealmError`` saying what is wrong."""
    if not isinstance(data, dict):
        raise RealmError(
            f"{where}: expected a JSON object (a Keycloak realm), found {type(data).__name__}"
        )
    problems = None
    try:
        realm = Realm.model_validate(data)
    except ValidationError as exc:
        problems = _messages(exc)
    if problems is not None:
        # Raised outside the except block on purpose: the pydantic error keeps the input
        # values (a value may be a secret), so it must not ride along as __context__.
        raise RealmError(f"{where}: not a realm the appliance accepts:\n{problems}")
    with_secret = [c.clientId for c in realm.callers if c.secret is not None]
    without = [c.clientId for c in realm.callers if c.secret is None]
    if secrets == "absent" and with_secret:
        raise RealmError(
            f"{where}: client secrets must not be in this realm file (found for "
            f"{', '.join(with_secret)}); they are generated on site and added only to the "
            "import rendered on the host"
        )
    if secrets == "present" and without:
        raise RealmError(
            f"{where}: the caller clients {', '.join(without)} have no secret; this must be the "
            "realm import rendered on site with the site's client secrets"
        )
    return realm


def realm_json_schema() -> dict[str, Any]:
    return Realm.model_json_schema(by_alias=True)

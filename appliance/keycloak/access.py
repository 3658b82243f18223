"""The site's access file: which caller clients exist and which models and adapters each may call.

One strict pydantic model (unknown keys refused with a "did you mean", no
coercion). It names models and adapters, not roles: the realm generator turns
them into the API client's roles (``model:<name>``, ``adapter:<name>``) and
refuses a name the plan does not serve. It holds no secret: client secrets are
generated on site (``appliance.keycloak.site_secrets``).

Format (YAML)::

    schema_version: 1
    realm: appliance                 # default; lowercase letters, digits, dashes; not "master"
    environment: production          # or "lab": only a lab realm may be served by the
                                     # development issuer (appliance.lab.dev_issuer)
    api_client: appliance-api        # the audience client (default)
    access_token_lifespan: 300       # seconds, 60..3600 (default 300)
    callers:
      - client_id: support-bot       # a confidential client with a service account
        description: Support team's assistant
        models: [mistral-7b-instruct-v0.3]
        adapters: [support-lora]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from appliance.keycloak.errors import AccessConfigError
from appliance.yaml_files import load_model, validate_model

ACCESS_SCHEMA_VERSION = 1
DEFAULT_REALM = "appliance"
DEFAULT_API_CLIENT = "appliance-api"
DEFAULT_ACCESS_TOKEN_LIFESPAN = 300
MIN_ACCESS_TOKEN_LIFESPAN = 60
MAX_ACCESS_TOKEN_LIFESPAN = 3600
DOC = "appliance/keycloak/access.py and docs/keycloak.md"

# Clients Keycloak creates in every realm: a caller must not take their ids.
RESERVED_CLIENT_IDS = frozenset(
    {
        "account",
        "account-console",
        "admin-cli",
        "broker",
        "realm-management",
        "security-admin-console",
    }
)

ClientId = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="lowercase letters, digits and dashes, at most 63 characters",
    ),
]
RealmName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
# As the bundle names models and adapters (payload.Name); "${" can never appear, so
# Keycloak's import-time placeholder substitution cannot touch a role name.
ServedName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
Environment = Literal["production", "lab"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class CallerSpec(_Strict):
    client_id: ClientId
    description: Annotated[str, Field(max_length=255)] = ""
    models: list[ServedName] = Field(default_factory=list, description="served model names")
    adapters: list[ServedName] = Field(default_factory=list, description="LoRA adapter names")
    enabled: bool = True

    @model_validator(mode="after")
    def _grants(self) -> CallerSpec:
        if not self.models and not self.adapters:
            raise ValueError(
                f"caller {self.client_id!r} may call nothing: list at least one model or adapter"
            )
        for what, names in (("models", self.models), ("adapters", self.adapters)):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what} of {self.client_id!r} repeat {', '.join(dupes)}")
        return self


class AccessConfig(_Strict):
    schema_version: Literal[1]
    realm: RealmName = DEFAULT_REALM
    environment: Environment = "production"
    api_client: ClientId = DEFAULT_API_CLIENT
    access_token_lifespan: Annotated[
        int, Field(ge=MIN_ACCESS_TOKEN_LIFESPAN, le=MAX_ACCESS_TOKEN_LIFESPAN)
    ] = DEFAULT_ACCESS_TOKEN_LIFESPAN
    callers: Annotated[list[CallerSpec], Field(min_length=1)]

    @model_validator(mode="after")
    def _names(self) -> AccessConfig:
        if self.realm == "master":
            raise ValueError("realm must not be 'master' (Keycloak's administration realm)")
        ids = [c.client_id for c in self.callers]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"caller client ids must be unique; repeated: {', '.join(dupes)}")
        if self.api_client in ids:
            raise ValueError(f"{self.api_client!r} is the API client; a caller cannot share its id")
        reserved = sorted(RESERVED_CLIENT_IDS.intersection([*ids, self.api_client]))
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)}: Keycloak creates clients with these ids in every realm; "
                "choose other ids"
            )
        return self


def parse_access(data: Any, *, where: str) -> AccessConfig:
    return validate_model(data, AccessConfig, "access file", AccessConfigError, source=where,
                          expected="schema_version and callers", doc=DOC)  # fmt: skip


def load_access(path: Path) -> AccessConfig:
    """Read and validate a site access file (YAML; JSON is YAML too)."""
    return load_model(
        Path(path),
        AccessConfig,
        "access file",
        AccessConfigError,
        expected="schema_version and callers",
        doc=DOC,
    )


def access_json_schema() -> dict[str, Any]:
    return AccessConfig.model_json_schema()

"""The realm import Keycloak reads at first start, generated from the plan and the site's access file.

``realm_for_plan(plan, access, adapters)`` is a pure function: the model the
plan serves and the bundle's adapters become the API client's roles
(``model:<served name>``, ``adapter:<name>``); each caller of the access file
becomes a confidential client whose service account holds the roles the file
grants it. The result is a plain dict in Keycloak's ``RealmRepresentation``
shape, checked by ``appliance.keycloak.schema`` before it is returned.

What the realm guarantees (and the schema enforces):
- ``sslRequired: all``, no self-registration, no password reset, no remember-me,
  brute-force protection on; access tokens live ``access_token_lifespan``
  seconds (300 by default); RS256.
- The API client is bearer-only: no login flow, no service account, no direct
  access grants; it only carries roles and is the audience of every token.
- Callers are confidential clients with a service account and client
  credentials only (standard, implicit and direct-access flows off, no
  redirect URIs), each with an ``oidc-audience-mapper`` that puts the API
  client in ``aud`` (without it Keycloak would put ``account`` there), and the
  ``basic`` and ``roles`` scopes (``sub``; ``resource_access.<api>.roles``).
- No secret: ``render_realm_import`` adds the site's client secrets on site.

The realm is imported only when Keycloak does not have it yet
(``--import-realm``); the unit re-imports it with ``kc.sh import`` when its
digest changes (docs/keycloak.md).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance import __version__
from appliance.keycloak.access import AccessConfig, CallerSpec
from appliance.keycloak.errors import RealmError
from appliance.keycloak.schema import (
    API_CLIENT_ATTRIBUTE,
    AUDIENCE_MAPPER,
    ENVIRONMENT_ATTRIBUTE,
    GENERATOR_ATTRIBUTE,
    SERVICE_ACCOUNT_PREFIX,
    validate_realm,
)
from appliance.keycloak.site_secrets import ClientSecrets

if TYPE_CHECKING:
    from appliance.bundle.payload import AdapterEntry
    from appliance.plan.report import Plan

# Brute-force detection (Keycloak's defaults, except a lockout that grows to 15 min).
BRUTE_FORCE = {
    "permanentLockout": False,
    "failureFactor": 5,
    "waitIncrementSeconds": 60,
    "maxFailureWaitSeconds": 900,
    "minimumQuickLoginWaitSeconds": 60,
    "quickLoginCheckMilliSeconds": 1000,
    "maxDeltaTimeSeconds": 43200,
}


def model_role(name: str) -> str:
    return f"model:{name}"


def adapter_role(name: str) -> str:
    return f"adapter:{name}"


@dataclass(frozen=True, slots=True)
class Served:
    """What the deployment serves: model ids and LoRA adapter names clients put in ``model``."""

    models: tuple[str, ...]
    adapters: tuple[str, ...] = ()

    def roles(self) -> list[tuple[str, str]]:
        """(role, description) of every model and adapter, models first, in order."""
        return [(model_role(m), f"call the model {m}") for m in self.models] + [
            (adapter_role(a), f"call the LoRA adapter {a}") for a in self.adapters
        ]


def served_from_plan(plan: Plan, adapters: Iterable[AdapterEntry] = ()) -> Served:
    """The model the plan serves (its served name) and the bundle's adapters."""
    from appliance.plan.engine_args import served_name

    if plan.model is None:
        raise RealmError(
            "the plan names no model, so the realm would grant nothing",
            hint="Plan with --model (the model the bundle carries).",
        )
    return Served((served_name(plan.model),), tuple(a.name for a in adapters))


def _unknown(kind: str, names: Sequence[str], known: Sequence[str], caller: str) -> RealmError:
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, list(known), n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    served = ", ".join(known) if known else "none"
    return RealmError(
        f"caller {caller!r} is granted {kind} this deployment does not serve: {', '.join(parts)}; "
        f"served {kind}: {served}",
        hint="Grant only what the plan serves, or deploy the bundle that carries it.",
    )


def _check_grants(served: Served, caller: CallerSpec) -> None:
    for kind, names, known in (
        ("models", caller.models, served.models),
        ("adapters", caller.adapters, served.adapters),
    ):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise _unknown(kind, unknown, known, caller.client_id)


def _api_client(access: AccessConfig) -> dict[str, Any]:
    return {
        "clientId": access.api_client,
        "name": "appliance API (audience)",
        "description": "The OpenAI-compatible API behind the gateway. Bearer-only: it never "
        "logs anyone in; its roles say which models and adapters a caller may use.",
        "enabled": True,
        "bearerOnly": True,
        "publicClient": False,
        "standardFlowEnabled": False,
        "implicitFlowEnabled": False,
        "directAccessGrantsEnabled": False,
        "serviceAccountsEnabled": False,
        "protocol": "openid-connect",
        "fullScopeAllowed": False,
        "frontchannelLogout": False,
        "attributes": {},
    }


def _caller_client(access: AccessConfig, caller: CallerSpec) -> dict[str, Any]:
    return {
        "clientId": caller.client_id,
        "name": caller.client_id,
        "description": caller.description,
        "enabled": caller.enabled,
        "bearerOnly": False,
        "publicClient": False,
        "clientAuthenticatorType": "client-secret",
        "standardFlowEnabled": False,
        "implicitFlowEnabled": False,
        "directAccessGrantsEnabled": False,
        "serviceAccountsEnabled": True,
        "protocol": "openid-connect",
        "fullScopeAllowed": True,
        "frontchannelLogout": False,
        "redirectUris": [],
        "webOrigins": [],
        "defaultClientScopes": ["basic", "roles"],
        "optionalClientScopes": [],
        "attributes": {"client_credentials.use_refresh_token": "false"},
        "protocolMappers": [
            {
                "name": f"audience {access.api_client}",
                "protocol": "openid-connect",
                "protocolMapper": AUDIENCE_MAPPER,
                "config": {
                    "included.client.audience": access.api_client,
                    "id.token.claim": "false",
                    "access.token.claim": "true",
                    "introspection.token.claim": "true",
                },
            }
        ],
    }


def _service_account(access: AccessConfig, caller: CallerSpec) -> dict[str, Any]:
    roles = [model_role(m) for m in caller.models] + [adapter_role(a) for a in caller.adapters]
    return {
        "username": SERVICE_ACCOUNT_PREFIX + caller.client_id,
        "enabled": True,
        "serviceAccountClientId": caller.client_id,
        "clientRoles": {access.api_client: roles},
    }


def build_realm(
    served: Served, access: AccessConfig, *, generator: str | None = None
) -> dict[str, Any]:
    """The realm import (no secrets) for ``served`` and ``access``; validated before returned."""
    if not served.models:
        raise RealmError("nothing is served: the realm needs at least one model")
    for caller in access.callers:
        _check_grants(served, caller)
    realm: dict[str, Any] = {
        "realm": access.realm,
        "displayName": f"appliance ({access.realm})",
        "enabled": True,
        "sslRequired": "all",
        "registrationAllowed": False,
        "registrationEmailAsUsername": False,
        "rememberMe": False,
        "verifyEmail": False,
        "loginWithEmailAllowed": False,
        "duplicateEmailsAllowed": False,
        "resetPasswordAllowed": False,
        "editUsernameAllowed": False,
        "bruteForceProtected": True,
        **BRUTE_FORCE,
        "accessTokenLifespan": access.access_token_lifespan,
        "accessCodeLifespan": 60,
        "ssoSessionIdleTimeout": 1800,
        "ssoSessionMaxLifespan": 36000,
        "revokeRefreshToken": True,
        "refreshTokenMaxReuse": 0,
        "defaultSignatureAlgorithm": "RS256",
        "attributes": {
            ENVIRONMENT_ATTRIBUTE: access.environment,
            API_CLIENT_ATTRIBUTE: access.api_client,
            GENERATOR_ATTRIBUTE: generator or f"appliance {__version__}",
        },
        "roles": {
            "client": {
                access.api_client: [
                    {"name": role, "description": text, "composite": False, "clientRole": True}
                    for role, text in served.roles()
                ]
            }
        },
        "clients": [_api_client(access)] + [_caller_client(access, c) for c in access.callers],
        "users": [_service_account(access, c) for c in access.callers],
    }
    validate_realm(realm, secrets="absent", where="generated realm")
    return realm


def realm_for_plan(
    plan: Plan, access: AccessConfig, adapters: Iterable[AdapterEntry] = ()
) -> dict[str, Any]:
    """The realm for what ``plan`` serves (plus the bundle payload's ``adapters``)."""
    return build_realm(served_from_plan(plan, adapters), access)


def realm_text(realm: dict[str, Any]) -> str:
    """Stable JSON text of a realm (key order as generated), as written to files."""
    return json.dumps(realm, indent=2, ensure_ascii=False) + "\n"


def realm_digest(text: str) -> str:
    """Short SHA-256 of a realm file's text; the unit re-imports the realm when it changes."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def caller_ids(realm: dict[str, Any]) -> list[str]:
    return [c["clientId"] for c in realm["clients"] if not c.get("bearerOnly")]


def render_realm_import(realm: dict[str, Any], client_secrets: ClientSecrets) -> str:
    """The import file for the host: ``realm`` with each caller's secret; write it 0600.

    The returned text holds secrets: write it with ``site_secrets.write_private``
    (or upload it 0600 owned by the Keycloak user), never print or log it.
    """
    validate_realm(realm, secrets="absent", where="realm")
    if client_secrets.realm != realm["realm"]:
        raise RealmError(
            f"{client_secrets.path} holds the secrets of realm {client_secrets.realm!r}, "
            f"not of {realm['realm']!r}"
        )
    rendered = copy.deepcopy(realm)
    for client in rendered["clients"]:
        if not client.get("bearerOnly"):
            # After clientAuthenticatorType, as Keycloak exports it.
            items = list(client.items())
            at = [k for k, _ in items].index("clientAuthenticatorType") + 1
            items.insert(at, ("secret", client_secrets.secret(client["clientId"])))
            client.clear()
            client.update(items)
    validate_realm(rendered, secrets="present", where="rendered realm import")
    return realm_text(rendered)

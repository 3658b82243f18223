"""The realm generated from the plan: golden files, Keycloak's field names, every rule enforced."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.keycloak.access import AccessConfig, parse_access
from appliance.keycloak.errors import RealmError, SiteSecretsError
from appliance.keycloak.realm import (
    Served,
    build_realm,
    caller_ids,
    realm_digest,
    realm_for_plan,
    realm_text,
    render_realm_import,
    served_from_plan,
)
from appliance.keycloak.schema import realm_json_schema, validate_realm
from appliance.keycloak.site_secrets import ClientSecrets
from appliance.plan.report import Plan

from .conftest import adapter, assert_golden, plan_for

# Field names of Keycloak's representations (org.keycloak.representations.idm, read from
# RealmRepresentation.java, ClientRepresentation.java, UserRepresentation.java,
# RoleRepresentation.java, ProtocolMapperRepresentation.java): the realm uses no other key.
KEYCLOAK_REALM_FIELDS = {
    "realm", "displayName", "enabled", "sslRequired", "registrationAllowed",
    "registrationEmailAsUsername", "rememberMe", "verifyEmail", "loginWithEmailAllowed",
    "duplicateEmailsAllowed", "resetPasswordAllowed", "editUsernameAllowed",
    "bruteForceProtected", "permanentLockout", "failureFactor", "waitIncrementSeconds",
    "maxFailureWaitSeconds", "minimumQuickLoginWaitSeconds", "quickLoginCheckMilliSeconds",
    "maxDeltaTimeSeconds", "accessTokenLifespan", "accessCodeLifespan", "ssoSessionIdleTimeout",
    "ssoSessionMaxLifespan", "revokeRefreshToken", "refreshTokenMaxReuse",
    "defaultSignatureAlgorithm", "attributes", "roles", "clients", "users",
}  # fmt: skip
KEYCLOAK_CLIENT_FIELDS = {
    "clientId", "name", "description", "enabled", "bearerOnly", "publicClient",
    "clientAuthenticatorType", "secret", "standardFlowEnabled", "implicitFlowEnabled",
    "directAccessGrantsEnabled", "serviceAccountsEnabled", "protocol", "fullScopeAllowed",
    "frontchannelLogout", "redirectUris", "webOrigins", "defaultClientScopes",
    "optionalClientScopes", "attributes", "protocolMappers",
}  # fmt: skip
KEYCLOAK_USER_FIELDS = {"username", "enabled", "serviceAccountClientId", "clientRoles"}
KEYCLOAK_ROLE_FIELDS = {"name", "description", "composite", "clientRole"}
KEYCLOAK_MAPPER_FIELDS = {"name", "protocol", "protocolMapper", "config"}
# The audience mapper's configuration keys (AudienceProtocolMapper, Keycloak 26).
AUDIENCE_MAPPER_KEYS = {
    "included.client.audience", "id.token.claim", "access.token.claim", "introspection.token.claim",
}  # fmt: skip

SECRETS_PATH = Path("/test/client-secrets.json")
SECRET_A = "A" * 20 + "-test-secret-support-bot-0"
SECRET_B = "B" * 20 + "-test-secret-analytics-000"


def production_realm(a100_plan: Plan, access: AccessConfig) -> dict[str, Any]:
    return realm_for_plan(a100_plan, access, [adapter("support-lora")])


def lab_access() -> AccessConfig:
    return parse_access(
        {
            "schema_version": 1,
            "realm": "lab",
            "environment": "lab",
            "access_token_lifespan": 120,
            "callers": [{"client_id": "e2e", "models": ["mixtral-8x22b-instruct-v0.1"]}],
        },
        where="lab access",
    )


def test_served_from_plan_uses_the_served_name_and_the_bundles_adapters(a100_plan: Plan) -> None:
    served = served_from_plan(a100_plan, [adapter("support-lora"), adapter("legal-lora")])
    assert served == Served(("mistral-7b-instruct-v0.3",), ("support-lora", "legal-lora"))
    assert [r for r, _ in served.roles()] == [
        "model:mistral-7b-instruct-v0.3",
        "adapter:support-lora",
        "adapter:legal-lora",
    ]


# --- golden files ----------------------------------------------------------------------


def test_realm_for_a100_mistral_with_an_adapter_is_golden(
    a100_plan: Plan, access: AccessConfig
) -> None:
    assert_golden(
        "realm_a100-80gb_mistral-7b_support-lora.json", production_realm(a100_plan, access)
    )


def test_lab_realm_for_h100_mixtral_is_golden() -> None:
    plan = plan_for("h100x8", "mixtral-8x22b-instruct-v0.1")
    assert_golden("realm_h100x8_mixtral-8x22b_lab.json", realm_for_plan(plan, lab_access()))


def test_rendered_import_is_golden(a100_plan: Plan, access: AccessConfig) -> None:
    secrets = ClientSecrets(
        SECRETS_PATH, "appliance", {"support-bot": SECRET_A, "analytics": SECRET_B}
    )
    text = render_realm_import(production_realm(a100_plan, access), secrets)
    assert_golden("realm_a100-80gb_mistral-7b_support-lora.rendered.json", json.loads(text))


def test_realm_schema_is_golden() -> None:
    assert_golden("realm-subset.schema.json", realm_json_schema())


# --- the realm's shape -------------------------------------------------------------------


def test_only_keycloak_field_names_are_used(a100_plan: Plan, access: AccessConfig) -> None:
    realm = production_realm(a100_plan, access)
    assert set(realm) <= KEYCLOAK_REALM_FIELDS
    for client in realm["clients"]:
        assert set(client) <= KEYCLOAK_CLIENT_FIELDS
        for mapper in client.get("protocolMappers", []):
            assert set(mapper) == KEYCLOAK_MAPPER_FIELDS
            assert set(mapper["config"]) == AUDIENCE_MAPPER_KEYS
    for user in realm["users"]:
        assert set(user) == KEYCLOAK_USER_FIELDS
    for role in realm["roles"]["client"]["appliance-api"]:
        assert set(role) == KEYCLOAK_ROLE_FIELDS


def test_security_settings(a100_plan: Plan, access: AccessConfig) -> None:
    realm = production_realm(a100_plan, access)
    assert realm["sslRequired"] == "all"
    assert realm["registrationAllowed"] is False
    assert realm["bruteForceProtected"] is True
    assert realm["accessTokenLifespan"] == 300
    assert realm["attributes"]["appliance.environment"] == "production"
    api, *callers = realm["clients"]
    assert api["clientId"] == "appliance-api" and api["bearerOnly"] is True
    assert not (api["directAccessGrantsEnabled"] or api["standardFlowEnabled"])
    for caller in callers:
        assert caller["serviceAccountsEnabled"] and not caller["publicClient"]
        assert not (caller["standardFlowEnabled"] or caller["directAccessGrantsEnabled"])
        assert "secret" not in caller
        (mapper,) = caller["protocolMappers"]
        assert mapper["protocolMapper"] == "oidc-audience-mapper"
        assert mapper["config"]["included.client.audience"] == "appliance-api"
    grants = {
        u["serviceAccountClientId"]: u["clientRoles"]["appliance-api"] for u in realm["users"]
    }
    assert grants == {
        "support-bot": ["model:mistral-7b-instruct-v0.3", "adapter:support-lora"],
        "analytics": ["model:mistral-7b-instruct-v0.3"],
    }


def test_no_placeholder_reaches_keycloak(a100_plan: Plan, access: AccessConfig) -> None:
    # Keycloak substitutes ${VAR} in realm files it imports at start.
    assert "${" not in realm_text(production_realm(a100_plan, access))


def test_generation_is_deterministic(a100_plan: Plan, access: AccessConfig) -> None:
    first = realm_text(production_realm(a100_plan, access))
    assert realm_text(production_realm(a100_plan, access)) == first
    assert realm_digest(first) == realm_digest(first) and len(realm_digest(first)) == 16


# --- refusals ------------------------------------------------------------------------------


def test_a_grant_the_plan_does_not_serve_is_refused_with_a_suggestion(a100_plan: Plan) -> None:
    access = parse_access(
        {"schema_version": 1, "callers": [{"client_id": "bot", "models": ["mistral-7b-instruct"]}]},
        where="t",
    )
    with pytest.raises(RealmError) as caught:
        realm_for_plan(a100_plan, access)
    message = caught.value.message
    assert "caller 'bot' is granted models this deployment does not serve" in message
    assert "did you mean 'mistral-7b-instruct-v0.3'?" in message


def test_an_adapter_the_bundle_lacks_is_refused(a100_plan: Plan, access: AccessConfig) -> None:
    with pytest.raises(RealmError, match="adapters this deployment does not serve: 'support-lora'"):
        realm_for_plan(a100_plan, access)  # the bundle carries no adapter


def test_adapter_roles_reach_the_realm_and_an_adapter_only_caller_holds_just_its_own(
    a100_plan: Plan,
) -> None:
    """Two callers as the gateway sees them: one with the base and one adapter, one with an
    adapter only; each adapter is a role of the API client, granted to exactly its caller."""
    access = parse_access(
        {
            "schema_version": 1,
            "callers": [
                {"client_id": "team-a", "models": ["mistral-7b-instruct-v0.3"],
                 "adapters": ["support-lora"]},
                {"client_id": "team-b", "adapters": ["legal-lora"]},
            ],
        },
        where="t",
    )  # fmt: skip
    realm = realm_for_plan(a100_plan, access, [adapter("support-lora"), adapter("legal-lora")])
    roles = [r["name"] for r in realm["roles"]["client"]["appliance-api"]]
    assert roles == [
        "model:mistral-7b-instruct-v0.3",
        "adapter:support-lora",
        "adapter:legal-lora",
    ]
    grants = {
        u["serviceAccountClientId"]: u["clientRoles"]["appliance-api"] for u in realm["users"]
    }
    assert grants == {
        "team-a": ["model:mistral-7b-instruct-v0.3", "adapter:support-lora"],
        "team-b": ["adapter:legal-lora"],
    }


def test_an_adapter_the_bundle_carries_under_another_name_is_refused_with_a_suggestion(
    a100_plan: Plan,
) -> None:
    access = parse_access(
        {"schema_version": 1, "callers": [{"client_id": "bot", "adapters": ["legal-lora2"]}]},
        where="t",
    )
    with pytest.raises(RealmError) as caught:
        realm_for_plan(a100_plan, access, [adapter("legal-lora"), adapter("support-lora")])
    assert (
        "caller 'bot' is granted adapters this deployment does not serve: 'legal-lora2'"
        " (did you mean 'legal-lora'?); served adapters: legal-lora, support-lora"
    ) in caught.value.message


def test_a_plan_without_a_model_is_refused(access: AccessConfig) -> None:
    with pytest.raises(RealmError, match="the plan names no model"):
        realm_for_plan(plan_for("nvml-mismatch", None), access)


def test_nothing_served_is_refused(access: AccessConfig) -> None:
    with pytest.raises(RealmError, match="at least one model"):
        build_realm(Served(()), access)


Mutation = Callable[[dict[str, Any]], None]


def _caller(realm: dict[str, Any]) -> dict[str, Any]:
    return realm["clients"][1]


MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "ssl-external": (
        lambda r: r.update(sslRequired="external"),
        "sslRequired: Input should be 'all'",
    ),
    "registration": (lambda r: r.update(registrationAllowed=True), "registrationAllowed"),
    "no-brute-force": (lambda r: r.update(bruteForceProtected=False), "bruteForceProtected"),
    "long-tokens": (lambda r: r.update(accessTokenLifespan=86400), "accessTokenLifespan"),
    "hs256": (lambda r: r.update(defaultSignatureAlgorithm="HS256"), "defaultSignatureAlgorithm"),
    "unknown-key": (
        lambda r: r.update(smtpServer={}),
        "smtpServer: Extra inputs are not permitted",
    ),
    "api-direct-grants": (
        lambda r: r["clients"][0].update(directAccessGrantsEnabled=True),
        "clients.0.api.directAccessGrantsEnabled",
    ),
    "api-full-scope": (lambda r: r["clients"][0].update(fullScopeAllowed=True), "fullScopeAllowed"),
    "caller-standard-flow": (
        lambda r: _caller(r).update(standardFlowEnabled=True),
        "clients.1.caller.standardFlowEnabled",
    ),
    "caller-public": (lambda r: _caller(r).update(publicClient=True), "publicClient"),
    "caller-direct-grants": (
        lambda r: _caller(r).update(directAccessGrantsEnabled=True),
        "directAccessGrantsEnabled",
    ),
    "caller-redirect": (lambda r: _caller(r).update(redirectUris=["*"]), "redirectUris"),
    "caller-no-service-account": (
        lambda r: _caller(r).update(serviceAccountsEnabled=False),
        "serviceAccountsEnabled",
    ),
    "caller-no-audience-mapper": (
        lambda r: _caller(r).update(protocolMappers=[]),
        "protocolMappers: List should have at least 1 item",
    ),
    "caller-audience-elsewhere": (
        lambda r: _caller(r)["protocolMappers"][0]["config"].update(
            {"included.client.audience": "account"}
        ),
        "has no oidc-audience-mapper for 'appliance-api'",
    ),
    "audience-in-id-token": (
        lambda r: _caller(r)["protocolMappers"][0]["config"].update({"id.token.claim": "true"}),
        "id.token.claim",
    ),
    "two-api-clients": (
        lambda r: r["clients"].append({**r["clients"][0], "clientId": "other-api"}),
        "expected exactly one bearer-only API client, found 2",
    ),
    "unknown-role-granted": (
        lambda r: r["users"][0]["clientRoles"]["appliance-api"].append("model:secret-model"),
        "is granted roles 'appliance-api' lacks: ['model:secret-model']",
    ),
    "role-without-prefix": (
        lambda r: r["roles"]["client"]["appliance-api"][0].update(name="mistral"),
        "roles.client.appliance-api.0.name: String should match pattern",
    ),
    "roles-of-another-client": (
        lambda r: r["roles"]["client"].update(account=[]),
        "roles.client must hold the API client 'appliance-api' only",
    ),
    "service-account-missing": (
        lambda r: r["users"].pop(),
        "expected exactly one service-account user per caller client",
    ),
    "service-account-misnamed": (
        lambda r: r["users"][0].update(username="service-account-someone"),
        "must be named 'service-account-support-bot'",
    ),
    "api-attribute-mismatch": (
        lambda r: r["attributes"].update({"appliance.api-client": "other"}),
        "but the bearer-only client is 'appliance-api'",
    ),
    "no-environment": (
        lambda r: r["attributes"].pop("appliance.environment"),
        "attributes.appliance.environment: Field required",
    ),
    "secret-in-template": (
        lambda r: _caller(r).update(secret=SECRET_A),
        "client secrets must not be in this realm file",
    ),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_each_rule_is_enforced(name: str, a100_plan: Plan, access: AccessConfig) -> None:
    realm = copy.deepcopy(production_realm(a100_plan, access))
    mutate, fragment = MUTATIONS[name]
    mutate(realm)
    with pytest.raises(RealmError) as caught:
        validate_realm(realm, secrets="absent", where="mutated")
    assert fragment in caught.value.message


def test_a_realm_must_be_an_object() -> None:
    with pytest.raises(RealmError, match="expected a JSON object"):
        validate_realm([], secrets="absent")


# --- secrets on site ------------------------------------------------------------------------


def secrets_for(realm: dict[str, Any]) -> ClientSecrets:
    values = {cid: f"{cid}-{'s' * 40}" for cid in caller_ids(realm)}
    return ClientSecrets(SECRETS_PATH, realm["realm"], values)


def test_render_adds_each_callers_secret_after_its_authenticator(
    a100_plan: Plan, access: AccessConfig
) -> None:
    realm = production_realm(a100_plan, access)
    rendered = json.loads(render_realm_import(realm, secrets_for(realm)))
    for client in rendered["clients"][1:]:
        keys = list(client)
        assert keys[keys.index("clientAuthenticatorType") + 1] == "secret"
        assert client["secret"] == f"{client['clientId']}-{'s' * 40}"
    assert "secret" not in rendered["clients"][0]
    validate_realm(rendered, secrets="present")
    assert "secret" not in realm["clients"][1]  # the template is untouched


def test_render_refuses_another_realms_secrets(a100_plan: Plan, access: AccessConfig) -> None:
    realm = production_realm(a100_plan, access)
    other = ClientSecrets(SECRETS_PATH, "other", {})
    with pytest.raises(RealmError, match="holds the secrets of realm 'other'"):
        render_realm_import(realm, other)


def test_render_names_a_missing_secret_without_showing_any(
    a100_plan: Plan, access: AccessConfig
) -> None:
    realm = production_realm(a100_plan, access)
    partial = ClientSecrets(SECRETS_PATH, "appliance", {"support-bot": SECRET_A})
    with pytest.raises(SiteSecretsError) as caught:
        render_realm_import(realm, partial)
    assert "no secret for client 'analytics'" in str(caught.value)
    assert SECRET_A not in str(caught.value) and SECRET_A not in repr(partial)


def test_a_rendered_import_without_secrets_is_refused(
    a100_plan: Plan, access: AccessConfig
) -> None:
    with pytest.raises(RealmError, match="have no secret"):
        validate_realm(production_realm(a100_plan, access), secrets="present")


def test_a_bad_secret_is_refused_without_being_shown(a100_plan: Plan, access: AccessConfig) -> None:
    realm = copy.deepcopy(production_realm(a100_plan, access))
    leaked = "short${HOME}"
    _caller(realm)["secret"] = leaked
    with pytest.raises(RealmError) as caught:
        validate_realm(realm, secrets="present")
    assert "a client secret must be 32 to 256 characters" in caught.value.message
    assert leaked not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert leaked not in repr(validate_realm(json.loads(render_realm_import(
        production_realm(a100_plan, access), secrets_for(realm)
    )), secrets="present"))  # fmt: skip

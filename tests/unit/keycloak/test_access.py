"""The site access file: the good example, one invalid fixture per failure mode, its schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.exitcodes import ExitCode
from appliance.keycloak.access import AccessConfig, access_json_schema, load_access, parse_access
from appliance.keycloak.errors import AccessConfigError

from .conftest import DATA, assert_golden

BAD = DATA / "access/bad"

# One fixture per failure mode -> what the message must say.
EXPECTED = {
    "unknown-key": "unknown key `callers[0].modles`; did you mean `models`?",
    "wrong-schema-version": "`schema_version` has an unknown value: expected one of 1, found number 2",
    "no-callers": "`callers`: List should have at least 1 item",
    "caller-without-grants": "caller 'bot' may call nothing: list at least one model or adapter",
    "bad-client-id": "`callers[0].client_id`: String should match pattern",
    "duplicate-caller": "caller client ids must be unique; repeated: bot",
    "caller-is-api-client": "'appliance-api' is the API client; a caller cannot share its id",
    "reserved-client-id": "admin-cli: Keycloak creates clients with these ids in every realm",
    "master-realm": "realm must not be 'master'",
    "bad-environment": "`environment` has an unknown value: expected one of 'production' or 'lab'",
    "lifespan-too-long": "`access_token_lifespan`: Input should be less than or equal to 3600",
    "lifespan-as-string": '`access_token_lifespan` has the wrong type: expected an integer, found string "300"',
    "repeated-model": "models of 'bot' repeat m",
    "placeholder-in-name": "`callers[0].models[0]`: String should match pattern",
    "duplicate-key": "duplicate key 'schema_version' (first given at line 1)",
    "not-a-mapping": "expected a YAML mapping with schema_version and callers; found a list",
    "empty": "expected a YAML mapping with schema_version and callers; found an empty file",
}


def test_every_bad_fixture_has_an_expectation() -> None:
    assert sorted(p.stem for p in BAD.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_access_file_is_refused_with_its_reason(name: str) -> None:
    path = BAD / f"{name}.yaml"
    with pytest.raises(AccessConfigError) as caught:
        load_access(path)
    assert EXPECTED[name] in caught.value.message
    assert str(path) in caught.value.message
    assert caught.value.exit_code == ExitCode.USAGE


def test_the_good_file_loads_with_defaults_filled() -> None:
    access = load_access(DATA / "access/good.yaml")
    assert [c.client_id for c in access.callers] == ["support-bot", "analytics"]
    assert access.callers[0].adapters == ["support-lora"]
    assert (access.realm, access.api_client, access.environment) == (
        "appliance",
        "appliance-api",
        "production",
    )


def test_defaults() -> None:
    access = parse_access(
        {"schema_version": 1, "callers": [{"client_id": "a", "models": ["m"]}]}, where="t"
    )
    assert access.access_token_lifespan == 300
    assert access.environment == "production"  # a realm is production unless it says lab
    assert access.callers[0].enabled


def test_parse_refuses_non_mappings() -> None:
    with pytest.raises(AccessConfigError, match="t: expected a YAML mapping"):
        parse_access(["x"], where="t")


def test_schema_is_golden() -> None:
    assert_golden("access.schema.json", access_json_schema())


def test_model_is_frozen(tmp_path: Path) -> None:
    access = load_access(DATA / "access/good.yaml")
    with pytest.raises(ValueError):
        access.realm = "other"  # type: ignore[misc]
    assert isinstance(access, AccessConfig)

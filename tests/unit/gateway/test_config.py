"""The gateway config: the documented example loads, each bad file (one per failure) says why."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from appliance.gateway.config import GatewayConfigError, load_config, parse_config

FIXTURES = Path(__file__).parent / "fixtures"
DOC = Path(__file__).resolve().parents[3] / "docs" / "gateway.md"

# One invalid file per failure mode, and what its message must say.
BAD = {
    "alg_none": "`tokens.algorithms`: `none` means unsigned tokens and is never accepted",
    "alg_hs256": "HS256 is a shared-secret algorithm",
    "alg_unknown": "unknown algorithm 'RS257': expected one of RS256",
    "alg_empty": "list at least one algorithm",
    "leeway_too_large": "`tokens.leeway_s`: Input should be less than or equal to 120; found number 600",
    "unknown_key": "unknown key `tokens.audiance`; did you mean `audience`?",
    "no_key_source": "give `jwks_file`",
    "model_two_roles": "model 'a' is granted by two roles ('model:a' and 'all')",
    "role_grants_nothing": "role 'model:a' grants no model",
    "upstream_credentials": "`upstream.url` must not carry credentials",
    "upstream_path": "give the server's base URL",
    "missing_tokens": "missing required key `tokens`",
    "wrong_schema_version": "`schema_version` has an unknown value: expected one of 1, found number 2",
    "duplicate_key": "duplicate key 'tokens' (first given at line 3)",
    "log_prompts_string": "`audit.log_prompts`",
    "not_a_mapping": (
        "expected a YAML mapping with schema_version, tls, tokens, served and access; found a list"
    ),
    "adapter_parent_not_served": (
        "`served`: adapter 'legal-lora' names parent 'b', which `served.models` does not list"
        " (served models: a); an adapter runs on a base model the model server serves"
    ),
    "adapter_is_a_model": "'b' is both a base model and an adapter",
    "granted_not_served": (
        "role 'adapter:support-lora' grants 'support-lora', which `served` does not list"
        " (served: a, legal-lora)"
    ),
    "no_served": "missing required key `served`",
}


def test_every_bad_fixture_is_listed() -> None:
    assert {p.stem for p in (FIXTURES / "bad").glob("*.yaml")} == set(BAD)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_config(name: str) -> None:
    with pytest.raises(GatewayConfigError) as caught:
        load_config(FIXTURES / "bad" / f"{name}.yaml")
    assert BAD[name] in caught.value.message
    assert str(FIXTURES / "bad") in caught.value.message  # names the file


def test_a_config_without_served_says_what_to_add() -> None:
    """Configs written before the gateway knew adapters are refused, never guessed at."""
    with pytest.raises(GatewayConfigError) as caught:
        load_config(FIXTURES / "bad" / "no_served.yaml")
    assert caught.value.message.count("\n  - ") == 1, "only `served` is missing"
    assert caught.value.hint is not None
    assert "add `served: {models: [<base model served names>], adapters:" in caught.value.hint
    assert "docs/gateway.md" in caught.value.hint
    # Other problems are still all listed, with the same hint.
    with pytest.raises(GatewayConfigError) as caught:
        parse_config({"schema_version": 1}, "old.yaml")
    assert "missing required key `tls`" in caught.value.message
    assert "missing required key `served`" in caught.value.message
    assert caught.value.hint is not None and "add `served:" in caught.value.hint


def test_what_serves_a_name() -> None:
    config = parse_config(
        {
            **yaml.safe_load((FIXTURES / "minimal.yaml").read_text()),
            "served": {"models": ["base-a", "base-b"], "adapters": {"lora-1": "base-b"}},
            "access": {"roles": {"adapter:lora-1": ["lora-1"]}},  # an adapter without its base
        }
    )
    assert config.served.resolve("base-a") == ("base-a", None)
    assert config.served.resolve("lora-1") == ("base-b", "lora-1")
    assert config.served.resolve("secret-model") == (None, None)
    assert config.served.resolve(None) == (None, None)
    assert config.served.names() == {"base-a", "base-b", "lora-1"}


def test_no_secret_in_messages() -> None:
    with pytest.raises(GatewayConfigError) as caught:
        load_config(FIXTURES / "bad" / "upstream_credentials.yaml")
    assert "secret" not in str(caught.value)


def test_minimal_config_and_defaults() -> None:
    config = load_config(FIXTURES / "minimal.yaml")
    assert config.tokens.algorithms == ("RS256",)
    assert config.tokens.roles_path == ("resource_access", "appliance-api", "roles")
    assert config.tokens.client_id_claim == "azp"
    assert config.audit.log_prompts is False
    assert config.upstream.is_loopback
    assert config.listen.port == 8443
    assert config.access.models_for(frozenset({"model:gemma-3-270m-q4_k_m", "other"})) == {
        "gemma-3-270m-q4_k_m"
    }


def test_json_config(tmp_path: Path) -> None:
    data = yaml.safe_load((FIXTURES / "minimal.yaml").read_text())
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(data))
    assert load_config(path) == load_config(FIXTURES / "minimal.yaml")
    path.write_text("{")
    with pytest.raises(GatewayConfigError, match="not valid JSON"):
        load_config(path)


def test_the_documented_example_is_valid() -> None:
    """docs/gateway.md's full example parses, and names every section the schema has."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    example = next(b for b in blocks if b.startswith("schema_version"))
    config = parse_config(yaml.safe_load(example), "docs/gateway.md")
    documented = set(yaml.safe_load(example))
    assert documented == set(type(config).model_fields)
    for section in documented - {"schema_version"}:
        fields = set(type(getattr(config, section)).model_fields)
        assert set(yaml.safe_load(example)[section]) == fields, (
            f"{section}: not every key documented"
        )

"""bundles/keycloak.yaml and the recipe's `artifact_sets`: pins only, never a placeholder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.bundle.connected.recipe import NO_PIN, load_recipe
from appliance.bundle.connected.sources import fetch_artifact
from appliance.deploy.keycloak_files import JAVA_ARTIFACT, KEYCLOAK_ARTIFACT
from appliance.errors import InputError

ROOT = Path(__file__).resolve().parents[3]
KEYCLOAK_SET = ROOT / "bundles/keycloak.yaml"

# Eclipse Temurin JRE 21.0.12+8, x64 Linux: the URL and SHA-256 Adoptium publishes (read from
# adoptium/containers d8d18d67a32e, 21/jre/ubuntu/noble/Dockerfile, amd64 ESUM).
TEMURIN_URL = (
    "https://github.com/adoptium/temurin21-binaries/releases/download/jdk-21.0.12%2B8/"
    "OpenJDK21U-jre_x64_linux_hotspot_21.0.12_8.tar.gz"
)
TEMURIN_SHA256 = "8a379a67c91a3ae61ffb33d46e0a40c7ba35e70713c4db31cfca30492f792eff"


def recipe_file(directory: Path, **extra: Any) -> Path:
    data = {
        "name": "sso",
        "version": 1,
        "expires": "30d",
        "model": {"gguf": "m.gguf", "licence": "MIT"},
        **extra,
    }
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def set_file(directory: Path, artifacts: list[dict[str, Any]], name: str = "set.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump({"artifacts": artifacts}, sort_keys=False))
    return path


def test_the_keycloak_set_pins_java_and_refuses_the_unpinned_keycloak(tmp_path: Path) -> None:
    raw = yaml.safe_load(KEYCLOAK_SET.read_text())
    entries = {a["name"]: a for a in raw["artifacts"]}
    assert set(entries) == {JAVA_ARTIFACT, KEYCLOAK_ARTIFACT}
    assert entries[JAVA_ARTIFACT]["url"] == TEMURIN_URL
    assert entries[JAVA_ARTIFACT]["sha256"] == TEMURIN_SHA256
    # Keycloak publishes no SHA-256: the entry says so with null, and the build refuses.
    assert entries[KEYCLOAK_ARTIFACT]["sha256"] is None
    with pytest.raises(InputError) as caught:
        load_recipe(recipe_file(tmp_path, artifact_sets=[str(KEYCLOAK_SET)]))
    message = caught.value.message
    assert f"artifact set {KEYCLOAK_SET}" in message
    assert "`artifacts[1].sha256`: no SHA-256 pinned (null)" in message
    assert "never accepts a placeholder" in message
    assert str(KEYCLOAK_SET) in (caught.value.hint or "")


def test_no_digest_in_the_set_is_a_placeholder() -> None:
    for entry in yaml.safe_load(KEYCLOAK_SET.read_text())["artifacts"]:
        digest = entry["sha256"]
        assert digest is None or len(set(digest)) > 4, f"{entry['name']}: looks like a placeholder"


def test_set_artifacts_join_the_recipes_and_are_fetched_like_them(tmp_path: Path) -> None:
    payload = tmp_path / "java.tar.gz"
    payload.write_bytes(b"not really a JRE" * 100)
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    (tmp_path / "sets").mkdir()
    set_file(
        tmp_path / "sets",
        [{"name": "java-runtime", "url": payload.as_uri(), "sha256": digest, "licence": "MIT"}],
    )
    own = {"name": "extra", "url": payload.as_uri(), "sha256": digest, "licence": "MIT"}
    recipe = load_recipe(recipe_file(tmp_path, artifacts=[own], artifact_sets=["sets/set.yaml"]))
    assert [a.name for a in recipe.artifacts] == ["extra", "java-runtime"]
    assert recipe.artifact_sets == [tmp_path / "sets/set.yaml"]
    fetched = fetch_artifact(recipe.artifacts[1], tmp_path / "work")
    assert fetched.entry.path == "artifacts/java-runtime/java.tar.gz"
    assert fetched.entry.sha256 == digest


def test_a_name_in_both_recipe_and_set_is_refused(tmp_path: Path) -> None:
    entry = {
        "name": "keycloak",
        "url": "https://example.org/kc.tar.gz",
        "sha256": "a" * 64,
        "licence": "MIT",
    }
    set_file(tmp_path, [entry])
    with pytest.raises(InputError, match="artifacts names must be unique; repeated: keycloak"):
        load_recipe(recipe_file(tmp_path, artifacts=[entry], artifact_sets=["set.yaml"]))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("artifacts: []\n", "`artifacts`: List should have at least 1 item"),
        ("artifact: []\n", "unknown key `artifact`; did you mean `artifacts`?"),
        ("- a\n", "expected a YAML mapping with `artifacts`"),
        (
            "artifacts:\n  - {name: k, url: 'https://u:p@example.org/k.tgz', sha256: null, licence: MIT}\n",
            "holds a URL with credentials (https://***@example.org/k.tgz)",
        ),
        (
            "artifacts:\n  - {name: k, url: 'https://example.org/k.tgz', licence: MIT}\n",
            "missing required key `artifacts[0].sha256`",
        ),
    ],
)
def test_bad_sets_are_refused_naming_the_set(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "set.yaml").write_text(content)
    with pytest.raises(InputError) as caught:
        load_recipe(recipe_file(tmp_path, artifact_sets=["set.yaml"]))
    assert problem in caught.value.message
    assert "artifact set" in caught.value.message
    assert "u:p@" not in str(caught.value)


def test_a_missing_set_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.yaml: cannot read artifact set"):
        load_recipe(recipe_file(tmp_path, artifact_sets=["nope.yaml"]))


def test_null_digest_in_a_recipe_is_refused_too(tmp_path: Path) -> None:
    entry = {"name": "k", "url": "https://example.org/k.tgz", "sha256": None, "licence": "MIT"}
    with pytest.raises(InputError) as caught:
        load_recipe(recipe_file(tmp_path, artifacts=[entry]))
    assert NO_PIN in caught.value.message


def test_no_bundle_recipe_or_profile_mentions_the_development_issuer() -> None:
    # The development issuer is lab tooling: never part of a bundle, a profile or a playbook.
    for folder in ("bundles", "hardware_profiles", "playbooks"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file():
                assert "dev_issuer" not in path.read_text(errors="replace"), path

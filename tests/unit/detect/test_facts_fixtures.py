"""Drift tests: saved facts fixtures and docs/facts.schema.json match a fresh generation."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from appliance.detect.facts_file import facts_json_schema

ROOT = Path(__file__).resolve().parents[3]
REGENERATE = ROOT / "tests" / "fixtures" / "facts" / "regenerate.py"
HOW = "run `python tests/fixtures/facts/regenerate.py` (or `make schemas` for the schema)"


def _regenerate_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("facts_regenerate", REGENERATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered() -> dict[Path, str]:
    result: dict[Path, str] = _regenerate_module().render_all()
    return result


def test_facts_fixtures_are_up_to_date(rendered: dict[Path, str]) -> None:
    stale = [
        str(path.relative_to(ROOT))
        for path, text in rendered.items()
        if not path.exists() or path.read_text("utf-8") != text
    ]
    assert not stale, f"out of date: {stale}; {HOW}"


def test_schema_file_matches_the_dataclasses() -> None:
    path = ROOT / "docs" / "facts.schema.json"
    expected = json.dumps(facts_json_schema(), indent=2, sort_keys=True) + "\n"
    assert path.read_text("utf-8") == expected, f"docs/facts.schema.json is stale; {HOW}"


def test_schema_accepts_one_host_or_a_non_empty_list() -> None:
    schema = facts_json_schema()
    host_ref, cluster = schema["anyOf"]
    assert host_ref == {"$ref": "#/$defs/HostFacts"}
    assert cluster["type"] == "array" and cluster["minItems"] == 1
    assert schema["$defs"]["HostFacts"]["additionalProperties"] is False


def test_generation_is_deterministic() -> None:
    module = _regenerate_module()
    assert module.render_all() == module.render_all()

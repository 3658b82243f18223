"""Shared pieces of the Keycloak tests: golden files, real plans, a site access file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.payload import AdapterEntry, AdapterProvenance, TrainingContentSummary
from appliance.detect.facts_file import load_facts
from appliance.keycloak.access import AccessConfig, load_access
from appliance.model.info import load_model_info
from appliance.plan.profiles import load_profiles
from appliance.plan.report import Plan, build_plan

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests/golden/keycloak"
DATA = Path(__file__).parent / "data"


def assert_golden(name: str, data: Any) -> None:
    """``data`` equals tests/golden/keycloak/NAME (JSON); ``UPDATE_GOLDENS=1`` rewrites it."""
    path = GOLDEN / name
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if os.environ.get("UPDATE_GOLDENS"):
        path.write_text(text)
    assert path.exists(), f"missing golden {path}: run UPDATE_GOLDENS=1 pytest {__file__}"
    assert json.loads(path.read_text()) == json.loads(text), (
        f"{path} differs: run UPDATE_GOLDENS=1 pytest tests/unit/keycloak and review the diff"
    )


def assert_golden_text(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDENS"):
        path.write_text(text)
    assert path.exists(), f"missing golden {path}: run UPDATE_GOLDENS=1 pytest {__file__}"
    assert path.read_text() == text, (
        f"{path} differs: run UPDATE_GOLDENS=1 pytest tests/unit/keycloak and review the diff"
    )


def plan_for(facts: str, model: str | None) -> Plan:
    return build_plan(
        load_profiles(),
        load_facts(ROOT / "tests/fixtures/facts" / f"{facts}.json"),
        facts_source=f"{facts}.json",
        model=None if model is None else load_model_info(ROOT / "tests/fixtures/models" / model),
    )


def adapter(name: str) -> AdapterEntry:
    """A payload adapter entry as a bundle carries it (only its name matters to the realm)."""
    return AdapterEntry(
        name=name,
        path=f"adapters/{name}",
        provenance=AdapterProvenance(
            base_model="mistralai/Mistral-7B-Instruct-v0.3",
            rank=16,
            alpha=32,
            target_modules=["q_proj", "v_proj"],
            licence="Apache-2.0",
            datasets=[{"name": "tickets", "records": 10}],  # type: ignore[list-item]
            training_summary=TrainingContentSummary(
                provider="Example",
                modalities=["text"],
                training_data_size="1-10 million tokens",
                copyright_opt_out_measures="in-house data only",
                illegal_content_measures="screened",
            ),
        ),
    )


@pytest.fixture(scope="session")
def a100_plan() -> Plan:
    return plan_for("a100-80gb", "mistral-7b-instruct-v0.3")


@pytest.fixture()
def access() -> AccessConfig:
    return load_access(DATA / "access/good.yaml")

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.detect.facts import HostFacts
from appliance.detect.facts_file import load_facts
from appliance.model.info import ModelInfo, load_model_info
from appliance.plan.profiles import Profile, load_profiles

ROOT = Path(__file__).resolve().parents[3]
FACTS = ROOT / "tests/fixtures/facts"
MODELS = ROOT / "tests/fixtures/models"


@pytest.fixture(scope="session")
def profiles() -> dict[str, Profile]:
    return load_profiles()


def facts(name: str) -> tuple[HostFacts, ...]:
    return load_facts(FACTS / f"{name}.json")


def model(name: str) -> ModelInfo:
    return load_model_info(MODELS / name)

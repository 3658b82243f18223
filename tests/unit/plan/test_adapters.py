"""Plan-time LoRA adapter checks (appliance.plan.adapters) on real adapter directories.

Each test writes a PEFT-shaped adapter into tmp_path: adapter_config.json as PEFT 0.21
writes it and adapter_model.safetensors by hand (header + real bf16/f32 bytes), for a
model shaped like Gemma 3 270M (the converted lab model's config.json: hidden 640, 4 heads,
1 KV head, head_dim 256, 18 layers, vocabulary 262,144).
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from appliance.compliance.findings import BaseIdentity
from appliance.errors import AdapterRefusedError, DoesNotFitError
from appliance.exitcodes import ExitCode
from appliance.model.hf_config import read_safetensors_index
from appliance.model.info import ModelInfo, load_model_info
from appliance.plan.adapters import (
    ADAPTER_FILE_LIMIT,
    LLAMACPP_REASON,
    AdapterFiles,
    CheckedAdapter,
    LoraSettings,
    check_adapters,
    lora_modules,
    lora_settings,
)
from appliance.plan.profiles import LlamaCppEngine, Profile, VllmEngine

GEMMA = ModelInfo(
    path="/models/gemma-3-270m",
    format="hf",
    name="gemma-3-270m",
    model_type="gemma3_text",
    num_layers=18,
    hidden_size=640,
    num_attention_heads=4,
    num_kv_heads=1,
    head_dim=256,
    vocab_size=262_144,
    max_context=32_768,
    num_experts=1,
    parameter_count=268_098_176,
    parameter_count_source="safetensors-index",
    stored_weights_bytes=536_196_352,
    checkpoint_dtype="bfloat16",
    quantization=None,
    has_chat_template=True,
)
BASE = BaseIdentity(
    name="gemma-3-270m",
    repo_id="google/gemma-3-270m",
    revision="abc1234def",
    digest="sha256:" + "d9" * 32,
)
REAL_MODELS = Path("/var/cache/appliance/models")
REAL_ADAPTERS = Path("/var/cache/appliance/adapters")

# (in, out) of each projection of GEMMA: q 640 -> 4 x 256, k/v 640 -> 1 x 256, o 1024 -> 640;
# the MLP's intermediate size is 2048.
DIMS = {
    "q_proj": (640, 1024),
    "k_proj": (640, 256),
    "v_proj": (640, 256),
    "o_proj": (1024, 640),
    "gate_proj": (640, 2048),
    "up_proj": (640, 2048),
    "down_proj": (2048, 640),
}
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
Tensor = tuple[str, tuple[int, ...], bytes]  # dtype, shape, data


def values(n: int, *, zero: bool = False, seed: int = 1) -> list[float]:
    return [0.0 if zero else 0.01 * (((i * 7 + seed) % 11) - 5) for i in range(n)]


def encode(dtype: str, data: list[float]) -> bytes:
    f32 = struct.pack(f"<{len(data)}f", *data)
    if dtype == "F32":
        return f32
    assert dtype == "BF16"
    return b"".join(f32[i + 2 : i + 4] for i in range(0, len(f32), 4))  # the top half


def write_safetensors(path: Path, tensors: dict[str, Tensor], *, pad: int = 8) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % pad)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def lora_tensors(
    modules: Iterable[str] = ATTN,
    layers: Iterable[int] = (0, 17),
    *,
    rank: int = 16,
    dtype: str = "BF16",
    zero_b: bool = False,
    dims: dict[str, tuple[int, int]] = DIMS,
) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for layer in layers:
        for module in modules:
            d_in, d_out = dims[module]
            where = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{where}.{module}"
            a = values(rank * d_in, seed=layer)
            b = values(d_out * rank, zero=zero_b, seed=layer + 3)
            out[f"{prefix}.lora_A.weight"] = (dtype, (rank, d_in), encode(dtype, a))
            out[f"{prefix}.lora_B.weight"] = (dtype, (d_out, rank), encode(dtype, b))
    return out


def peft_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "alora_invocation_tokens": None,
        "alpha_pattern": {},
        "base_model_name_or_path": "gemma-3-270m",
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": 32,
        "lora_bias": False,
        "lora_dropout": 0.05,
        "modules_to_save": None,
        "peft_type": "LORA",
        "peft_version": "0.21.2",
        "r": 16,
        "rank_pattern": {},
        "revision": None,
        "target_modules": ["k_proj", "v_proj", "o_proj", "q_proj"],
        "task_type": "CAUSAL_LM",
        "use_bdlora": None,
        "use_dora": False,
        "use_qalora": False,
        "use_rslora": False,
    }
    return config | overrides


def make_adapter(
    root: Path,
    name: str = "alpha",
    *,
    config: dict[str, Any] | None = None,
    tensors: dict[str, Tensor] | None = None,
    declared_base: str = "gemma-3-270m",
    declared_revision: str | None = None,
    declared_base_digest: str | None = None,
) -> AdapterFiles:
    directory = root / name
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps(config or peft_config(), indent=2))
    write_safetensors(
        directory / "adapter_model.safetensors", lora_tensors() if tensors is None else tensors
    )
    return AdapterFiles(name, directory, declared_base, declared_revision, declared_base_digest)


@pytest.fixture
def vllm(profiles: dict[str, Profile]) -> VllmEngine:
    engine = profiles["cpu-vllm"].engine
    assert isinstance(engine, VllmEngine)
    return engine


def refused(
    adapters: list[AdapterFiles], engine: VllmEngine | LlamaCppEngine, model: ModelInfo = GEMMA
) -> AdapterRefusedError:
    with pytest.raises(AdapterRefusedError) as info:
        check_adapters(adapters, model, BASE, engine)
    return info.value


def only_reason(err: AdapterRefusedError) -> str:
    assert len(err.refusals) == 1, [r.reason for r in err.refusals]
    return err.refusals[0].reason


# --- adapters that pass --------------------------------------------------------------


def test_a_trained_adapter_passes(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(
        tmp_path, declared_revision="abc1234", declared_base_digest="D9" * 32
    )  # a short commit id and a bare upper-case digest name the same base
    assert check_adapters([adapter], GEMMA, BASE, vllm) == (
        CheckedAdapter(
            "alpha", 16, 32, ("k_proj", "o_proj", "q_proj", "v_proj"), adapter.directory
        ),
    )


def test_f32_adapter_with_mlp_modules_and_a_rank_pattern_passes(
    tmp_path: Path, vllm: VllmEngine
) -> None:
    modules = (*ATTN, "gate_proj", "up_proj", "down_proj")
    tensors = lora_tensors(modules, layers=(0,), rank=8, dtype="F32")
    tensors |= lora_tensors(("q_proj",), layers=(1,), rank=16, dtype="F32")
    config = peft_config(
        r=8, rank_pattern={"layers.1.self_attn.q_proj": 16}, target_modules=list(modules)
    )
    adapter = make_adapter(tmp_path, config=config, tensors=tensors)
    (checked,) = check_adapters([adapter], GEMMA, BASE, vllm)
    assert checked.rank == 16  # what --max-lora-rank must cover: max(r, *rank_pattern)
    assert checked.target_modules == tuple(sorted(modules))


def test_base_named_by_repo_id_or_local_path_passes(tmp_path: Path, vllm: VllmEngine) -> None:
    a = make_adapter(tmp_path, "a", declared_base="google/gemma-3-270m")
    b = make_adapter(
        tmp_path, "b", config=peft_config(base_model_name_or_path="/srv/models/gemma-3-270m/")
    )
    assert [c.name for c in check_adapters([a, b], GEMMA, BASE, vllm)] == ["a", "b"]


def test_lora_settings_from_ranks_8_and_16(tmp_path: Path, vllm: VllmEngine) -> None:
    a = make_adapter(tmp_path, "a", config=peft_config(r=8), tensors=lora_tensors(rank=8))
    b = make_adapter(tmp_path, "b")
    checked = check_adapters([a, b], GEMMA, BASE, vllm)
    assert lora_settings(checked, vllm) == LoraSettings(16, 2, 2)


def test_lora_settings_round_up_and_cap_the_batch(tmp_path: Path) -> None:
    engine = VllmEngine.model_validate(
        {
            "kind": "vllm",
            "tensor_parallel_size": 1,
            "pipeline_parallel_size": 1,
            "max_model_len": 2048,
            "quantization": ["none"],
            "max_lora_rank": 64,
            "max_loras": 2,
        }
    )
    adapters = [
        CheckedAdapter(f"a{i}", rank, 8, ("q_proj",), tmp_path) for i, rank in enumerate((4, 20, 2))
    ]
    assert lora_settings(adapters, engine) == LoraSettings(32, 2, 3)
    with pytest.raises(ValueError, match="at least one adapter"):
        lora_settings([], engine)


def test_profile_lora_fields_default_and_bounds() -> None:
    base = {
        "kind": "vllm",
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "max_model_len": 2048,
        "quantization": ["none"],
    }
    engine = VllmEngine.model_validate(base)
    assert (engine.max_lora_rank, engine.max_loras) == (16, 4)
    for bad in ({"max_lora_rank": 24}, {"max_loras": 0}, {"max_loras": 65}):
        with pytest.raises(ValueError):
            VllmEngine.model_validate(base | bad)


def test_vllm_modules_per_architecture() -> None:
    assert lora_modules("gemma3_text") == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert lora_modules("mixtral") == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate",
        "w1",
        "w2",
        "w3",
    }
    assert lora_modules("apertus") is None


# --- the engine ----------------------------------------------------------------------


def test_llamacpp_profile_refuses_every_adapter(
    tmp_path: Path, profiles: dict[str, Profile]
) -> None:
    engine = profiles["cpu-llamacpp"].engine
    adapters = [make_adapter(tmp_path, "a"), make_adapter(tmp_path, "b")]
    err = refused(adapters, engine)
    assert [r.adapter for r in err.refusals] == ["a", "b"]
    assert {r.reason for r in err.refusals} == {LLAMACPP_REASON}
    for part in (
        "lora_path",
        "one LoRA per model entry",
        "reloads it",
        "default model",
        "GGUF LoRA",
    ):
        assert part in LLAMACPP_REASON
    assert "vLLM profile" in err.refusals[0].hint


def test_refusal_is_exit_3_and_lists_what_to_do(tmp_path: Path, vllm: VllmEngine) -> None:
    err = refused([make_adapter(tmp_path, config=peft_config(peft_type="IA3"))], vllm)
    assert isinstance(err, DoesNotFitError) and err.exit_code == ExitCode.DOES_NOT_FIT == 3
    assert "adapter 'alpha': adapter_config.json peft_type is 'IA3'" in str(err)
    assert "LoraConfig" in err.refusals[0].hint and "plan again" in str(err)


# --- one refusal each ----------------------------------------------------------------

CONFIG_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"peft_type": "LOHA"}, "only LoRA adapters (peft_type LORA) can be served"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save is ['lm_head']"),
    ({"use_dora": True}, "DoRA (use_dora: true)"),
    ({"bias": "all"}, "bias is 'all': vLLM serves only bias 'none'"),
    ({"lora_bias": True}, "LoRA bias (lora_bias: true)"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights 'pissa' changes the base model's weights"),
    ({"layer_replication": [[0, 4]]}, "layer_replication"),
    (
        {"layers_to_transform": [0, 18]},
        "layers_to_transform [0, 18] names layers the model does not have (it has 18: 0..17)",
    ),
    (
        {"base_model_name_or_path": "meta-llama/Llama-3.2-1B"},
        "base_model_name_or_path is 'meta-llama/Llama-3.2-1B', but the bundle's model is 'gemma-3-270m' or 'google/gemma-3-270m'",
    ),
    (
        {"revision": "0123456789ab"},
        "adapter_config.json revision is '0123456789ab', but the bundle's model is revision 'abc1234def'",
    ),
]


@pytest.mark.parametrize(("overrides", "reason"), CONFIG_REFUSALS)
def test_config_refusal(
    tmp_path: Path, vllm: VllmEngine, overrides: dict[str, Any], reason: str
) -> None:
    err = refused([make_adapter(tmp_path, config=peft_config(**overrides))], vllm)
    assert reason in only_reason(err)


def test_rank_above_the_profile_cap(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(tmp_path, config=peft_config(r=32), tensors=lora_tensors(rank=32))
    err = refused([adapter], vllm)
    assert only_reason(err) == "rank r = 32 exceeds the profile's max_lora_rank 16"
    assert err.refusals[0].hint.startswith(
        "use a profile whose engine.max_lora_rank covers it (one of 32, 64, 128, 256, 320, 512)"
    )


def test_rank_pattern_above_the_profile_cap(tmp_path: Path, vllm: VllmEngine) -> None:
    tensors = lora_tensors(("k_proj", "v_proj", "o_proj")) | lora_tensors(("q_proj",), rank=64)
    config = peft_config(rank_pattern={"q_proj": 64})
    err = refused([make_adapter(tmp_path, config=config, tensors=tensors)], vllm)
    assert (
        only_reason(err)
        == "rank rank_pattern['q_proj'] = 64 exceeds the profile's max_lora_rank 16"
    )


def test_rank_pattern_rank_shapes_follow_the_pattern(tmp_path: Path, vllm: VllmEngine) -> None:
    # rank_pattern gives q_proj rank 8, but the q_proj weights are rank 16.
    config = peft_config(rank_pattern={"q_proj": 8})
    err = refused([make_adapter(tmp_path, config=config)], vllm)
    assert "do not fit the model's projections" in only_reason(err)
    assert "lora_A [16, 640], lora_B [1024, 16]; expected [8, 640], [1024, 8]" in only_reason(err)


def test_declared_base_of_another_model(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(tmp_path, declared_base="other-org/gemma-3-270m")
    assert "the recipe declares base model 'other-org/gemma-3-270m'" in only_reason(
        refused([adapter], vllm)
    )


def test_declared_revision_differs(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(tmp_path, declared_revision="main")
    assert (
        "the recipe declares base revision 'main', but the bundle's model is revision 'abc1234def'"
        in only_reason(refused([adapter], vllm))
    )


def test_declared_digest_differs(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(tmp_path, declared_base_digest="sha256:" + "ee" * 32)
    reason = only_reason(refused([adapter], vllm))
    assert f"the recipe declares base digest sha256:{'ee' * 32}" in reason
    assert "trained on other weights" in reason


def test_unsupported_target_module(tmp_path: Path, vllm: VllmEngine) -> None:
    config = peft_config(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "fc1"])
    assert (
        "target_modules ['fc1'] are modules vLLM does not apply LoRA to on model_type 'gemma3_text'"
        in only_reason(refused([make_adapter(tmp_path, config=config)], vllm))
    )


def test_lm_head_and_embedding_weights(tmp_path: Path, vllm: VllmEngine) -> None:
    tensors = lora_tensors()
    tensors["base_model.model.lm_head.weight"] = ("BF16", (4, 640), encode("BF16", values(2560)))
    tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = (
        "BF16",
        (16, 1000),
        encode("BF16", values(16000)),
    )
    reason = only_reason(refused([make_adapter(tmp_path, tensors=tensors)], vllm))
    assert (
        "it carries embedding or output-layer weights (base_model.model.lm_head.weight, base_model.model.model.embed_tokens.lora_embedding_A)"
        in reason
    )
    assert "its embedding covers 1000 tokens, the model's vocabulary 262144" in reason


def test_tensors_that_are_not_lora_weights(tmp_path: Path, vllm: VllmEngine) -> None:
    tensors = lora_tensors()
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = (
        "BF16",
        (1024,),
        encode("BF16", values(1024)),
    )
    assert (
        "it carries tensors that are not LoRA weights (base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector)"
        in only_reason(refused([make_adapter(tmp_path, tensors=tensors)], vllm))
    )


def test_declared_module_without_weights(tmp_path: Path, vllm: VllmEngine) -> None:
    config = peft_config(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"])
    assert (
        "declares target modules ['gate_proj'] but adapter_model.safetensors holds no LoRA weights for them"
        in only_reason(refused([make_adapter(tmp_path, config=config)], vllm))
    )


def test_layer_beyond_the_model(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(tmp_path, tensors=lora_tensors(layers=(0, 18, 25)))
    assert "LoRA weights for layer(s) 18, 25 but the model has 18 layers (0..17)" in only_reason(
        refused([adapter], vllm)
    )


def test_adapter_for_another_model_of_the_same_name(tmp_path: Path, vllm: VllmEngine) -> None:
    # Same name, same module names, but trained on a 2048-wide model (Llama 3.2 1B shapes).
    dims = {
        "q_proj": (2048, 2048),
        "k_proj": (2048, 512),
        "v_proj": (2048, 512),
        "o_proj": (2048, 2048),
    }
    adapter = make_adapter(
        tmp_path, tensors=lora_tensors(layers=(0,), rank=8, dims=dims), config=peft_config(r=8)
    )
    reason = only_reason(refused([adapter], vllm))
    assert reason.startswith(
        "4 LoRA weight pair(s) do not fit the model's projections (hidden_size 640, 4 heads and 1 KV heads of 256"
    )
    assert (
        "model.layers.0.self_attn.q_proj: lora_A [8, 2048], lora_B [2048, 8]; expected [8, 640], [1024, 8]"
        in reason
    )
    assert "trained for another model" in reason


def test_mlp_intermediate_sizes_disagree(tmp_path: Path, vllm: VllmEngine) -> None:
    modules = ("gate_proj", "down_proj")
    tensors = lora_tensors(modules, layers=(0,), dims=DIMS | {"down_proj": (8192, 640)})
    adapter = make_adapter(
        tmp_path, tensors=tensors, config=peft_config(target_modules=list(modules))
    )
    assert (
        "disagree on the MLP's intermediate size: 2048 (model.layers.0.mlp.gate_proj), 8192 (model.layers.0.mlp.down_proj)"
        in only_reason(refused([adapter], vllm))
    )


def test_unpaired_weights(tmp_path: Path, vllm: VllmEngine) -> None:
    tensors = lora_tensors()
    del tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert "missing: model.layers.0.self_attn.q_proj.lora_B" in only_reason(
        refused([make_adapter(tmp_path, tensors=tensors)], vllm)
    )


def test_integer_weights(tmp_path: Path, vllm: VllmEngine) -> None:
    tensors = {k: ("I16", shape, data) for k, (_, shape, data) in lora_tensors().items()}
    assert "its LoRA weights are stored as I16" in only_reason(
        refused([make_adapter(tmp_path, tensors=tensors)], vllm)
    )


def test_tokenizer_larger_than_the_vocabulary(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(tmp_path)
    (adapter.directory / "added_tokens.json").write_text(json.dumps({"<extra>": 262_144}))
    (adapter.directory / "tokenizer_config.json").write_text(
        json.dumps(
            {"added_tokens_decoder": {"0": {"content": "<pad>"}, "262143": {"content": "x"}}}
        )
    )
    assert (
        "its tokenizer has more tokens than the model's vocabulary of 262144: added_tokens.json (262145 tokens)"
        in only_reason(refused([adapter], vllm))
    )


def test_tokenizer_json_of_the_base_passes_and_of_a_bigger_vocabulary_is_refused(
    tmp_path: Path, vllm: VllmEngine
) -> None:
    fits = make_adapter(tmp_path, "fits")
    (fits.directory / "tokenizer.json").write_text(
        json.dumps(
            {
                "model": {"type": "BPE", "vocab": {"a": 0, "b": 262_000}},
                "added_tokens": [{"id": 262_143}],
            }
        )
    )
    assert check_adapters([fits], GEMMA, BASE, vllm)[0].name == "fits"
    big = make_adapter(tmp_path, "big")
    (big.directory / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "Unigram", "vocab": [["a", 0.0]] * 262_145}})
    )
    assert "tokenizer.json (262145 tokens)" in only_reason(refused([big], vllm))


def test_unknown_architecture(tmp_path: Path, vllm: VllmEngine) -> None:
    apertus = replace(GEMMA, model_type="apertus")
    err = refused([make_adapter(tmp_path)], vllm, apertus)
    assert (
        "model_type 'apertus') is not one whose vLLM LoRA modules this version of appliance knows"
        in only_reason(err)
    )


def test_duplicate_names(tmp_path: Path, vllm: VllmEngine) -> None:
    a = make_adapter(tmp_path, "a")
    assert "another adapter has the same name" in only_reason(refused([a, a], vllm))


# --- would silently serve the base model ---------------------------------------------


def test_no_lora_weights_at_all(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(tmp_path, tensors={})
    reason = only_reason(refused([adapter], vllm))
    assert "holds no LoRA weights (no *.lora_A.weight / *.lora_B.weight tensors)" in reason
    assert "exactly like the base model" in reason


def test_every_weight_outside_what_vllm_loads(tmp_path: Path, vllm: VllmEngine) -> None:
    dims = {"fc1": (640, 2048), "fc2": (2048, 640)}
    tensors: dict[str, Tensor] = {}
    for module, (d_in, d_out) in dims.items():
        prefix = f"base_model.model.model.layers.0.mlp.{module}"
        tensors[f"{prefix}.lora_A.weight"] = ("BF16", (16, d_in), encode("BF16", values(16 * d_in)))
        tensors[f"{prefix}.lora_B.weight"] = (
            "BF16",
            (d_out, 16),
            encode("BF16", values(16 * d_out)),
        )
    adapter = make_adapter(tmp_path, tensors=tensors, config=peft_config(target_modules=".*mlp.*"))
    reason = only_reason(refused([adapter], vllm))
    assert (
        "none of its LoRA weights are on modules vLLM applies LoRA to on model_type 'gemma3_text' (it has fc1, fc2"
        in reason
    )
    assert "it would answer exactly like the base model" in reason


def test_some_weights_outside_what_vllm_loads(tmp_path: Path, vllm: VllmEngine) -> None:
    tensors = lora_tensors()
    tensors["base_model.model.model.layers.0.mlp.fc1.lora_A.weight"] = (
        "BF16",
        (16, 640),
        encode("BF16", values(16 * 640)),
    )
    tensors["base_model.model.model.layers.0.mlp.fc1.lora_B.weight"] = (
        "BF16",
        (2048, 16),
        encode("BF16", values(16 * 2048)),
    )
    assert (
        "LoRA weights on modules vLLM does not apply LoRA to on model_type 'gemma3_text': fc1 (vLLM fails to load it)"
        in only_reason(refused([make_adapter(tmp_path, tensors=tensors)], vllm))
    )


@pytest.mark.parametrize("dtype", ["BF16", "F32"])
def test_untrained_adapter_with_zero_lora_b(tmp_path: Path, vllm: VllmEngine, dtype: str) -> None:
    tensors = lora_tensors(dtype=dtype, zero_b=True)
    # -0.0 is zero too: the sign bit alone does not make a trained weight.
    name = "base_model.model.model.layers.17.self_attn.o_proj.lora_B.weight"
    tensors[name] = (dtype, (640, 16), encode(dtype, [-0.0] * (640 * 16)))
    reason = only_reason(refused([make_adapter(tmp_path, tensors=tensors)], vllm))
    assert (
        "every lora_B weight in adapter_model.safetensors is exactly zero, PEFT's initial state"
        in reason
    )


def test_one_non_zero_value_is_a_trained_adapter(tmp_path: Path, vllm: VllmEngine) -> None:
    tensors = lora_tensors(zero_b=True)
    name = "base_model.model.model.layers.17.self_attn.v_proj.lora_B.weight"
    data = [0.0] * (256 * 16)
    data[-1] = 1e-3
    tensors[name] = ("BF16", (256, 16), encode("BF16", data))
    assert len(check_adapters([make_adapter(tmp_path, tensors=tensors)], GEMMA, BASE, vllm)) == 1


# --- several at once -----------------------------------------------------------------


def test_every_refusal_of_every_adapter_is_listed(tmp_path: Path, vllm: VllmEngine) -> None:
    good = make_adapter(tmp_path, "good")
    bad1 = make_adapter(
        tmp_path,
        "bad1",
        config=peft_config(r=32, use_dora=True),
        tensors=lora_tensors(rank=32),
        declared_base="mistral-7b",
    )
    bad2 = make_adapter(tmp_path, "bad2", tensors=lora_tensors(zero_b=True))
    err = refused([bad1, good, bad2], vllm)
    assert [(r.adapter, r.reason.split(" ")[0:3]) for r in err.refusals] == [
        ("bad1", ["the", "recipe", "declares"]),
        ("bad1", ["DoRA", "(use_dora:", "true):"]),
        ("bad1", ["rank", "r", "="]),
        ("bad2", ["every", "lora_B", "weight"]),
    ]
    text = str(err)
    assert text.startswith("4 adapter check(s) failed for 2 adapter(s) (bad1, bad2)")
    assert "good" not in text
    assert text.count("\n  - adapter 'bad1': ") == 3 and text.count("\n  - adapter 'bad2': ") == 1


# --- hostile files -------------------------------------------------------------------


def test_truncated_header(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(tmp_path)
    path = adapter.directory / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    reason = only_reason(refused([adapter], vllm))
    assert (
        "adapter_model.safetensors is not a readable safetensors file: header length field says"
        in reason
    )


def test_truncated_data(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(tmp_path)
    path = adapter.directory / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    assert "(truncated download?)" in only_reason(refused([adapter], vllm))


def test_huge_header_length(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(tmp_path)
    path = adapter.directory / "adapter_model.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + path.read_bytes()[8:])
    reason = only_reason(refused([adapter], vllm))
    assert f"header length field says {2**63} bytes" in reason
    assert "headers are at most 16777216 bytes" in reason


def test_header_not_json(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(tmp_path)
    (adapter.directory / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 4) + b"{{{{")
    assert "header is not valid JSON" in only_reason(refused([adapter], vllm))


def no_hang(call: Callable[[], None], seconds: float = 10) -> None:
    done = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, daemon=True).start()
    assert done.wait(seconds), "the check blocked on a FIFO"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json"])
def test_fifo_is_refused_without_blocking(tmp_path: Path, vllm: VllmEngine, name: str) -> None:
    adapter = make_adapter(tmp_path)
    (adapter.directory / name).unlink()
    os.mkfifo(adapter.directory / name)
    result: list[AdapterRefusedError] = []
    no_hang(lambda: result.append(refused([adapter], vllm)))
    assert "a named pipe (FIFO)" in only_reason(result[0])


def test_file_above_the_size_cap(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(tmp_path)
    path = adapter.directory / "adapter_model.safetensors"
    os.truncate(path, ADAPTER_FILE_LIMIT + 1)  # sparse: no disk used
    reason = only_reason(refused([adapter], vllm))
    assert f"is {ADAPTER_FILE_LIMIT + 1:,} bytes, above the 4 GiB limit for an adapter" in reason


def test_pickled_weights_only(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(tmp_path)
    (adapter.directory / "adapter_model.safetensors").rename(
        adapter.directory / "adapter_model.bin"
    )
    assert (
        "it has no adapter_model.safetensors (only adapter_model.bin, pickled weights appliance does not read)"
        in only_reason(refused([adapter], vllm))
    )


def test_config_not_json(tmp_path: Path, vllm: VllmEngine) -> None:
    adapter = make_adapter(tmp_path)
    (adapter.directory / "adapter_config.json").write_text("{")
    assert "its adapter_config.json cannot be read" in only_reason(refused([adapter], vllm))


# --- real adapters (made by scripts/make-lab-adapters, when present) ------------------


def real_adapter_dirs() -> list[Path]:
    """The adapters of the newest complete set (older sets of earlier script versions may
    still be in the cache beside it)."""
    if not REAL_ADAPTERS.is_dir():
        return []
    stamps = sorted(REAL_ADAPTERS.glob("*/COMPLETE"), key=lambda p: p.stat().st_mtime)
    if not stamps:
        return []
    return sorted(d for d in stamps[-1].parent.iterdir() if (d / "adapter_config.json").is_file())


@pytest.mark.skipif(
    not real_adapter_dirs(), reason="no real PEFT adapters under /var/cache/appliance/adapters"
)
def test_real_peft_adapters_pass_and_a_zeroed_copy_is_refused(
    tmp_path: Path, vllm: VllmEngine
) -> None:
    dirs = real_adapter_dirs()
    config = json.loads((dirs[0] / "adapter_config.json").read_text())
    model_dirs = [
        d for d in REAL_MODELS.glob("*") if (d / "config.json").is_file() and d.name in str(dirs[0])
    ]
    model = load_model_info(model_dirs[0]) if model_dirs else GEMMA
    assert (
        model.hidden_size,
        model.num_attention_heads,
        model.num_kv_heads,
        model.head_dim,
        model.num_layers,
        model.vocab_size,
    ) == (640, 4, 1, 256, 18, 262_144)
    base = BaseIdentity(name=config["base_model_name_or_path"])
    adapters = [AdapterFiles(d.name, d, base.name) for d in dirs]
    checked = check_adapters(adapters, model, base, vllm)
    assert [(c.rank, c.alpha) for c in checked] == [(16, 32)] * len(dirs)
    assert lora_settings(checked, vllm) == LoraSettings(16, len(dirs), len(dirs))
    # The same adapter with every lora_B zeroed (its header kept) is refused.
    copy = tmp_path / "zeroed"
    copy.mkdir()
    (copy / "adapter_config.json").write_bytes((dirs[0] / "adapter_config.json").read_bytes())
    data = bytearray((dirs[0] / "adapter_model.safetensors").read_bytes())
    for t in read_safetensors_index(dirs[0] / "adapter_model.safetensors").tensors:
        if t.name.endswith("lora_B.weight"):
            data[t.begin : t.end] = bytes(t.end - t.begin)
    (copy / "adapter_model.safetensors").write_bytes(bytes(data))
    err = refused([AdapterFiles("zeroed", copy, base.name)], vllm, model)
    assert "exactly zero" in only_reason(err)

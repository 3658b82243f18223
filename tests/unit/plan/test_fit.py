"""Fit reports on recorded hosts, against the claims of serving-facts.md."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.plan.fit import GIB, estimate, fit_report
from appliance.plan.profiles import Profile

from .conftest import facts, model

MISTRAL = "mistral-7b-instruct-v0.3"
MIXTRAL_8X7B = "mixtral-8x7b-instruct-v0.1"
MIXTRAL_8X22B = "mixtral-8x22b-instruct-v0.1"
DEVSTRAL = "devstral-small-2505"
APERTUS = "apertus-70b-instruct-2509"


def report(profiles: dict[str, Profile], profile: str, host: str, name: str, **kw: object):  # type: ignore[no-untyped-def]
    others = tuple(p for n, p in profiles.items() if n != profile)
    return fit_report(model(name), profiles[profile], facts(host), others=others, **kw)  # type: ignore[arg-type]


def test_mixtral_8x22b_does_not_fit_one_a100_80gb(profiles: dict[str, Profile]) -> None:
    fit = report(profiles, "a100-single", "a100-80gb", MIXTRAL_8X22B)
    assert not fit.fits and fit.estimate is not None
    est = fit.estimate
    assert est.precision == "bf16"
    assert est.weights_bytes / GIB == pytest.approx(263, rel=0.01)  # reference table
    assert est.budget_per_device == int(0.9 * 80 * GIB)
    assert est.max_context == 0  # the weights alone do not fit
    # No quantisation fits one A100 80GB (int4 is ~72 GiB of weights alone) ...
    assert not [a for a in fit.alternatives if a.what.startswith("quantization")]
    assert any(n.startswith("int4 (awq_marlin) would not fit either") for n in fit.notes)
    # ... but the H100 cluster profile does, in bf16.
    h100 = next(a for a in fit.alternatives if a.what == "profile h100-cluster")
    assert h100.estimate.precision == "bf16" and h100.estimate.fits
    assert "8 GPU(s)" in h100.detail


@pytest.mark.parametrize("name", [MISTRAL, MIXTRAL_8X7B, MIXTRAL_8X22B, DEVSTRAL, APERTUS])
def test_8x_h100_runs_every_reference_model_in_bf16(
    profiles: dict[str, Profile], name: str
) -> None:
    fit = report(profiles, "h100-cluster", "h100x8", name)
    assert fit.fits, fit.problems
    assert fit.estimate is not None and fit.estimate.precision == "bf16"
    assert fit.layout is not None and fit.layout.tensor_parallel == 8


def test_rtx4090_runs_mistral_7b_in_bf16(profiles: dict[str, Profile]) -> None:
    fit = report(profiles, "rtx4090", "rtx4090", MISTRAL)
    assert fit.fits and fit.estimate is not None
    assert fit.estimate.weights_per_device / GIB == pytest.approx(13.5, rel=0.01)
    assert fit.estimate.kv_bytes_per_token == 128 * 1024


def test_rtx4090_runs_a_24b_only_in_int4(profiles: dict[str, Profile]) -> None:
    fit = report(profiles, "rtx4090", "rtx4090", DEVSTRAL)
    assert not fit.fits
    fitting = [a.what for a in fit.alternatives if a.what.startswith("quantization")]
    assert fitting == ["quantization awq_marlin"]  # fp8 (Ada has it) is still too big
    assert any(n.startswith("fp8 would not fit either") for n in fit.notes)


def test_a100_80gb_runs_24b_in_bf16_and_70b_only_in_int4(profiles: dict[str, Profile]) -> None:
    assert report(profiles, "a100-single", "a100-80gb", DEVSTRAL).fits
    apertus = report(profiles, "a100-single", "a100-80gb", APERTUS)
    assert not apertus.fits
    assert [a.what for a in apertus.alternatives if a.what.startswith("quantization")] == [
        "quantization awq_marlin"
    ]


def test_a100_40gb_is_smaller(profiles: dict[str, Profile]) -> None:
    fit = report(profiles, "a100-single", "a100-40gb", DEVSTRAL)
    assert not fit.fits
    assert fit.layout is not None and fit.layout.memory_per_gpu_bytes == 40 * GIB


def test_two_h100_nodes_shard_weights_over_16_gpus(profiles: dict[str, Profile]) -> None:
    fit = report(profiles, "h100-cluster", "h100x8-2nodes", APERTUS)
    assert fit.fits and fit.layout is not None and fit.estimate is not None
    assert (fit.layout.nodes, fit.layout.tensor_parallel, fit.layout.pipeline_parallel) == (2, 8, 2)
    assert fit.estimate.weights_per_device == -(-fit.estimate.weights_bytes // 16)


def test_two_rtx4090_without_nvlink_use_pipeline_stages(profiles: dict[str, Profile]) -> None:
    fit = report(profiles, "rtx4090", "rtx4090x2", MISTRAL)
    assert fit.layout is not None
    assert (fit.layout.tensor_parallel, fit.layout.pipeline_parallel) == (1, 2)
    assert fit.layout.gpu_indices == (0, 1)


def test_context_override_and_the_largest_context(profiles: dict[str, Profile]) -> None:
    fit = report(profiles, "a100-single", "a100-80gb", APERTUS, context=4096)
    assert fit.estimate is not None and fit.estimate.context == 4096
    assert any("context 4096 set on the command line" in n for n in fit.notes)
    # fp8 Apertus at full context does not fit, but a shorter context would.
    fp8 = dataclasses.replace(model(APERTUS), quantization="fp8", stored_weights_bytes=None)
    fit = fit_report(fp8, profiles["a100-single"], facts("a100-80gb"))
    assert fit.estimate is not None and not fit.fits
    shorter = next(a for a in fit.alternatives if a.what.startswith("context "))
    assert 0 < shorter.estimate.context < 32768 and shorter.estimate.fits


def test_tensor_parallel_must_divide_heads(profiles: dict[str, Profile]) -> None:
    odd = dataclasses.replace(model(MISTRAL), num_attention_heads=30)
    fit = fit_report(odd, profiles["h100-cluster"], facts("h100x8"))
    assert "tensor parallel 8 does not divide the model's 30 attention heads" in fit.problems
    assert not fit.fits


def test_kv_heads_fewer_than_tp_are_replicated() -> None:
    est = estimate(
        precision="bf16",
        weights=8 * GIB,
        kv_per_token=8000,
        model_max_context=None,
        context=1000,
        weight_shards=8,
        kv_shards=4,
        overhead=0,
        budget=10 * GIB,
        devices=8,
    )
    assert est.weights_per_device == GIB
    assert est.kv_per_device == 2000 * 1000  # divided by the 4 KV shards, not the 8 GPUs
    assert est.max_context == (10 * GIB - GIB) // 2000
    assert est.sequences_at_context == (10 * GIB - GIB) // (2000 * 1000)


def test_forced_gpu_profile_on_a_cpu_host(profiles: dict[str, Profile]) -> None:
    fit = fit_report(model(MISTRAL), profiles["a100-single"], facts("cpu-avx2"))
    assert not fit.fits and fit.estimate is None
    assert fit.problems[0].startswith("cpu-avx2-01: no usable GPU (No NVIDIA GPU on the PCI bus")


def test_forced_cluster_profile_on_one_gpu(profiles: dict[str, Profile]) -> None:
    fit = fit_report(model(MISTRAL), profiles["h100-cluster"], facts("a100-80gb"))
    # gpus-per-node resolves to the single A100: the arithmetic runs on the real hardware.
    assert fit.layout is not None and fit.layout.tensor_parallel == 1
    assert fit.fits


def test_gguf_needs_the_cpu_profile(profiles: dict[str, Profile]) -> None:
    gguf = dataclasses.replace(model(MISTRAL), format="gguf", checkpoint_dtype="Q4_K_M")
    fit = fit_report(gguf, profiles["rtx4090"], facts("rtx4090"))
    assert not fit.fits and "use the cpu-llamacpp profile" in fit.problems[0]


def test_hf_directory_on_the_cpu_profile_needs_conversion(profiles: dict[str, Profile]) -> None:
    fit = fit_report(model(MISTRAL), profiles["cpu-llamacpp"], facts("cpu-avx2"))
    assert not fit.fits and "convert it on the connected side" in fit.problems[0]
    assert fit.estimate is not None and fit.estimate.precision == "Q4_K_M"
    assert fit.estimate.weights_bytes == int(model(MISTRAL).parameter_count * 4.85 / 8)


def test_cpu_budget_is_ram_fraction(profiles: dict[str, Profile]) -> None:
    (host,) = facts("cpu-avx2")
    gguf = dataclasses.replace(
        model(MIXTRAL_8X22B), format="gguf", checkpoint_dtype="Q8_0", stored_weights_bytes=150 * GIB
    )
    fit = fit_report(gguf, profiles["cpu-llamacpp"], (host,))
    assert fit.estimate is not None
    assert fit.estimate.budget_per_device == int(0.8 * host.memory.total_bytes)
    assert not fit.fits  # 150 GiB of weights on a 64 GiB host
    assert fit.layout is not None and fit.layout.threads == host.cpu.physical_cores


def test_pre_quantised_awq_checkpoint(profiles: dict[str, Profile]) -> None:
    awq = model("mistral-7b-v0.3-awq")
    assert awq.quantization == "awq"
    fit = fit_report(awq, profiles["rtx4090"], facts("rtx4090"))
    assert fit.fits and fit.quantization == "awq_marlin"
    assert fit.estimate is not None and fit.estimate.precision == "int4"
    # The same checkpoint on a GPU too old for the profile's AWQ methods is refused.
    (host,) = facts("rtx4090")
    old = tuple(dataclasses.replace(g, compute_capability=(7, 0)) for g in host.gpu.gpus)
    old_host = dataclasses.replace(host, gpu=dataclasses.replace(host.gpu, gpus=old))
    refused = fit_report(awq, profiles["rtx4090"], (old_host,))
    assert not refused.fits
    assert "awq_marlin needs compute capability 8.0, the GPUs have 7.0" in refused.problems[0]

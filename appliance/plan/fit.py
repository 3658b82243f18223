"""Memory fit: will this model run under this profile on this hardware, before transfer?

Pure arithmetic over ``ModelInfo``, a ``Profile`` and host facts (no IO):

    per device = weights / shards + KV cache at the context / KV shards + engine overhead
    budget     = gpu_memory_utilization x VRAM          (vLLM, per GPU)
               = ram_fraction x RAM                     (llama.cpp, per host)

Weights shard over tensor x pipeline parallel GPUs; the KV cache shards over
pipeline stages and over at most ``kv_heads`` tensor-parallel ranks (beyond
that vLLM replicates KV heads). When the model does not fit, the report says
the largest context that fits, the quantisation that would fit on this
hardware, and which other profile would fit it on its own minimum hardware.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

from appliance.detect.facts import GpuFacts, HostFacts
from appliance.model.info import (
    BYTES_PER_PARAM,
    ModelInfo,
    kv_cache_bytes_per_token,
    weights_bytes,
)
from appliance.plan.profiles import (
    QUANT_MIN_CC,
    QUANT_PRECISION,
    LlamaCppEngine,
    Profile,
    VllmEngine,
    format_cc,
)

GIB = 1 << 30

# Bits per weight of llama.cpp file types, for the GGUF size a conversion would give.
GGUF_BITS_PER_WEIGHT: dict[str, float] = {
    "Q4_0": 4.5,
    "Q4_K_S": 4.58,
    "Q4_K_M": 4.85,
    "Q5_K_S": 5.54,
    "Q5_K_M": 5.69,
    "Q6_K": 6.56,
    "Q8_0": 8.5,
    "F16": 16.0,
    "BF16": 16.0,
}
# vLLM quantisation methods a pre-quantised checkpoint may declare, by family.
_CHECKPOINT_METHODS: dict[str, tuple[str, ...]] = {
    "awq": ("awq", "awq_marlin"),
    "gptq": ("gptq", "gptq_marlin"),
    "fp8": ("fp8",),
}


@dataclass(frozen=True, slots=True)
class Estimate:
    precision: str  # "bf16", "fp8", "int4" or a GGUF file type such as "Q4_K_M"
    context: int
    devices: int  # GPUs holding one replica (tp x pp), 1 for a CPU host
    weights_bytes: int
    weights_per_device: int
    kv_bytes_per_token: int  # whole model, all layers
    kv_per_device: int  # one sequence at ``context``
    overhead_per_device: int
    required_per_device: int
    budget_per_device: int
    max_context: int  # largest context that fits (0: the weights alone do not fit)
    sequences_at_context: int  # full-context sequences the KV budget holds at once

    @property
    def fits(self) -> bool:
        return self.required_per_device <= self.budget_per_device


@dataclass(frozen=True, slots=True)
class Layout:
    """How a profile lands on the actual hardware."""

    device: Literal["gpu", "cpu"]
    nodes: int
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    gpu_indices: tuple[int, ...] = ()  # per node
    memory_per_gpu_bytes: int = 0  # smallest of the GPUs used
    compute_capability: tuple[int, int] = (0, 0)  # lowest of the GPUs used
    threads: int = 0  # llama.cpp
    ram_bytes: int = 0  # smallest host

    def describe(self) -> str:
        if self.device == "cpu":
            return (
                f"{self.nodes} host(s), {self.threads} threads, {self.ram_bytes / GIB:.1f} GiB RAM"
            )
        return (
            f"{self.nodes} node(s) x {len(self.gpu_indices)} GPU(s) of {self.memory_per_gpu_bytes / GIB:.1f} GiB, "
            f"tensor parallel {self.tensor_parallel}, pipeline parallel {self.pipeline_parallel}"
        )


@dataclass(frozen=True, slots=True)
class Alternative:
    what: str  # "quantization awq_marlin", "profile h100-cluster"
    estimate: Estimate
    detail: str


@dataclass(frozen=True, slots=True)
class FitReport:
    profile: str
    model: str
    layout: Layout | None
    quantization: str | None  # vLLM --quantization value, None = full precision / checkpoint's own
    estimate: Estimate | None
    problems: tuple[str, ...]  # each one alone makes the plan unfit
    notes: tuple[str, ...]
    alternatives: tuple[Alternative, ...]  # what would fit instead

    @property
    def fits(self) -> bool:
        return not self.problems and self.estimate is not None and self.estimate.fits


# --- arithmetic ----------------------------------------------------------------


def estimate(
    *,
    precision: str,
    weights: int,
    kv_per_token: int,
    model_max_context: int | None,
    context: int,
    weight_shards: int,
    kv_shards: int,
    overhead: int,
    budget: int,
    devices: int,
) -> Estimate:
    weights_pd = -(-weights // weight_shards)
    kv_per_token_pd = -(-kv_per_token // kv_shards)
    kv_pd = kv_per_token_pd * context
    free_for_kv = budget - weights_pd - overhead
    max_context = max(0, free_for_kv // kv_per_token_pd) if kv_per_token_pd else 0
    if model_max_context is not None:
        max_context = min(max_context, model_max_context)
    return Estimate(
        precision=precision,
        context=context,
        devices=devices,
        weights_bytes=weights,
        weights_per_device=weights_pd,
        kv_bytes_per_token=kv_per_token,
        kv_per_device=kv_pd,
        overhead_per_device=overhead,
        required_per_device=weights_pd + kv_pd + overhead,
        budget_per_device=budget,
        max_context=max_context,
        sequences_at_context=max(0, free_for_kv // kv_pd) if kv_pd else 0,
    )


def gpu_estimate(
    model: ModelInfo,
    engine: VllmEngine,
    *,
    precision: Literal["bf16", "fp8", "int4"],
    tp: int,
    pp: int,
    memory_per_gpu: int,
    context: int,
) -> Estimate:
    stored = model.stored_weights_bytes
    pre_quantised = model.quantization is not None and stored is not None
    weights = stored if pre_quantised and stored is not None else weights_bytes(model, precision)
    kv_bytes = 1.0 if engine.kv_cache_dtype == "fp8" else 2.0
    return estimate(
        precision=precision,
        weights=weights,
        kv_per_token=kv_cache_bytes_per_token(model, kv_bytes),
        model_max_context=model.max_context,
        context=context,
        weight_shards=tp * pp,
        kv_shards=min(tp, model.num_kv_heads) * pp,
        overhead=int(engine.engine_overhead_gib * GIB),
        budget=int(engine.gpu_memory_utilization * memory_per_gpu),
        devices=tp * pp,
    )


def cpu_estimate(
    model: ModelInfo, engine: LlamaCppEngine, *, gguf_type: str, ram_bytes: int, context: int
) -> Estimate:
    if (
        model.format == "gguf"
        and gguf_type == model.checkpoint_dtype
        and model.stored_weights_bytes
    ):
        weights = model.stored_weights_bytes
    else:
        weights = int(model.parameter_count * GGUF_BITS_PER_WEIGHT[gguf_type] / 8)
    return estimate(
        precision=gguf_type,
        weights=weights,
        kv_per_token=kv_cache_bytes_per_token(model, 2.0),  # llama.cpp KV cache is f16
        model_max_context=model.max_context,
        context=context,
        weight_shards=1,
        kv_shards=1,
        overhead=int(engine.overhead_gib * GIB),
        budget=int(engine.ram_fraction * ram_bytes),
        devices=1,
    )


# --- layouts -------------------------------------------------------------------


def matching_gpus(profile: Profile, host: HostFacts) -> list[GpuFacts]:
    """The host's GPUs this profile would use: those its name patterns select, else all."""
    gpus = list(host.gpu.gpus)
    if profile.match.gpu is None:
        return gpus
    patterns = [re.compile(p, re.IGNORECASE) for p in profile.match.gpu.name_patterns]
    selected = [g for g in gpus if any(p.search(g.name) for p in patterns)]
    return selected or gpus


def gpu_layout(
    profile: Profile, engine: VllmEngine, hosts: tuple[HostFacts, ...]
) -> tuple[Layout | None, list[str]]:
    problems: list[str] = []
    per_host = [matching_gpus(profile, h) for h in hosts]
    for host, gpus in zip(hosts, per_host, strict=True):
        if not gpus:
            problems.append(f"{host.hostname}: no usable GPU ({host.gpu.message})")
    if problems:
        return None, problems
    count = min(len(g) for g in per_host)
    nodes = len(hosts)
    tp = _resolve(engine.tensor_parallel_size, count, nodes)
    pp = _resolve(engine.pipeline_parallel_size, count, nodes)
    gpus_needed = tp * (pp if engine.pipeline_parallel_size == "gpus-per-node" else 1)
    if engine.pipeline_parallel_size != "nodes" and nodes > 1:
        problems.append(
            f"profile {profile.name} runs on one node, the facts list {nodes} hosts: "
            "plan one host at a time or use a multi-node profile"
        )
    if gpus_needed > count:
        problems.append(
            f"profile {profile.name} needs {gpus_needed} GPU(s) per node "
            f"(tensor parallel {tp}), the host has {count}"
        )
        gpus_needed = count
    used = [gpus[:gpus_needed] for gpus in per_host]
    flat = [g for node in used for g in node]
    return (
        Layout(
            device="gpu",
            nodes=nodes,
            tensor_parallel=tp,
            pipeline_parallel=pp,
            gpu_indices=tuple(g.index for g in used[0]),
            memory_per_gpu_bytes=min(g.memory_total_bytes for g in flat),
            compute_capability=min(g.compute_capability for g in flat),
        ),
        problems,
    )


def _resolve(size: int | str, gpus_per_node: int, nodes: int) -> int:
    if size == "gpus-per-node":
        return gpus_per_node
    if size == "nodes":
        return nodes
    assert isinstance(size, int)
    return size


def cpu_layout(
    hosts: tuple[HostFacts, ...],
    threads: int | Literal["physical-cores"] = "physical-cores",
    pipeline_parallel: int | Literal["gpus-per-node", "nodes"] = 1,
) -> Layout:
    """A CPU engine (llama.cpp, vLLM's CPU build) on the smallest of ``hosts``; a multi-node
    group of vLLM's CPU build runs one pipeline stage per host (``pipeline_parallel: nodes``)."""
    cores = min(h.cpu.physical_cores for h in hosts)
    return Layout(
        device="cpu",
        nodes=len(hosts),
        pipeline_parallel=_resolve(pipeline_parallel, 1, len(hosts)),
        threads=cores if threads == "physical-cores" else threads,
        ram_bytes=min(h.memory.total_bytes for h in hosts),
    )


# --- the report ----------------------------------------------------------------


def default_context(
    model: ModelInfo, profile_context: int, override: int | None
) -> tuple[int, list[str]]:
    if override is not None:
        return override, [
            f"context {override} set on the command line (profile default {profile_context})"
        ]
    if model.max_context is not None and model.max_context < profile_context:
        return model.max_context, [
            f"context {model.max_context}: the model's maximum, below the profile's {profile_context}"
        ]
    return profile_context, []


def fit_report(
    model: ModelInfo,
    profile: Profile,
    hosts: tuple[HostFacts, ...],
    *,
    others: tuple[Profile, ...] = (),
    context: int | None = None,
) -> FitReport:
    if isinstance(profile.engine, VllmEngine):
        report = _fit_vllm(model, profile, profile.engine, hosts, context)
    else:
        report = _fit_llamacpp(model, profile, profile.engine, hosts, context)
    if report.fits or not others:
        return report
    elsewhere = tuple(
        a for other in others if (a := reference_fit(model, other, context)) is not None
    )
    return dataclasses.replace(report, alternatives=report.alternatives + elsewhere)


def _fit_vllm(
    model: ModelInfo,
    profile: Profile,
    engine: VllmEngine,
    hosts: tuple[HostFacts, ...],
    context: int | None,
) -> FitReport:
    ctx, notes = default_context(model, engine.max_model_len, context)
    if model.format == "gguf":
        problem = (
            f"{model.name} is a GGUF file; vLLM profiles serve Hugging Face model directories "
            "(config.json + safetensors): use the cpu-llamacpp profile for GGUF, or bring the HF directory"
        )
        return _blocked(profile, model, notes, [problem])
    if engine.device == "cpu":
        return _fit_vllm_cpu(model, profile, engine, hosts, ctx, notes)
    layout, problems = gpu_layout(profile, engine, hosts)
    if layout is None:
        return _blocked(profile, model, notes, problems)
    tp, pp = layout.tensor_parallel, layout.pipeline_parallel
    if model.num_attention_heads % tp:
        problems.append(
            f"tensor parallel {tp} does not divide the model's {model.num_attention_heads} attention heads"
        )
    if pp > model.num_layers:
        problems.append(f"pipeline parallel {pp} exceeds the model's {model.num_layers} layers")
    method, refusal = _checkpoint_method(model, engine, layout.compute_capability)
    if refusal:
        problems.append(refusal)
    precision = QUANT_PRECISION[method] if method else _checkpoint_precision(model)
    est = gpu_estimate(
        model,
        engine,
        precision=precision,
        tp=tp,
        pp=pp,
        memory_per_gpu=layout.memory_per_gpu_bytes,
        context=ctx,
    )
    alternatives: list[Alternative] = []
    if not est.fits and model.quantization is None:
        alternatives, misses = _quantisation_alternatives(
            model, engine, layout, ctx, tried=method or "none"
        )
        notes.extend(misses)
    if not est.fits and 0 < est.max_context < ctx:
        alternatives.append(
            Alternative(
                what=f"context {est.max_context}",
                estimate=gpu_estimate(
                    model,
                    engine,
                    precision=precision,
                    tp=tp,
                    pp=pp,
                    memory_per_gpu=layout.memory_per_gpu_bytes,
                    context=est.max_context,
                ),
                detail=f"same precision ({precision}) with --context {est.max_context}",
            )
        )
    quantization = method if method not in (None, "none") else None
    return FitReport(
        profile=profile.name,
        model=model.name,
        notes=tuple(notes),
        layout=layout,
        quantization=quantization,
        estimate=est,
        problems=tuple(problems),
        alternatives=tuple(alternatives),
    )


def _fit_vllm_cpu(
    model: ModelInfo,
    profile: Profile,
    engine: VllmEngine,
    hosts: tuple[HostFacts, ...],
    ctx: int,
    notes: list[str],
) -> FitReport:
    """vLLM's CPU build: bf16 weights, a fixed KV space (``VLLM_CPU_KVCACHE_SPACE``) and the
    engine's processes in RAM, within ``ram_fraction`` of the smallest host's memory."""
    layout = cpu_layout(hosts, pipeline_parallel=engine.pipeline_parallel_size)
    pp = layout.pipeline_parallel
    problems: list[str] = []
    if len(hosts) > 1 and engine.pipeline_parallel_size != "nodes":
        problems.append(
            f"profile {profile.name} runs on one host, the facts list {len(hosts)} hosts: "
            "plan one host at a time or use a multi-node profile (cpu-vllm-group)"
        )
    if pp > model.num_layers:
        problems.append(f"pipeline parallel {pp} exceeds the model's {model.num_layers} layers")
    if model.quantization is not None:
        problems.append(
            f"{model.name} is quantised ({model.quantization}); the vLLM CPU profile serves "
            "bf16 checkpoints only"
        )
    assert engine.cpu_kvcache_space_gib is not None  # the profile's schema requires it on cpu
    kv_space = engine.cpu_kvcache_space_gib * GIB
    per_token = kv_cache_bytes_per_token(model, 2.0)
    weights = weights_bytes(model, "bf16")
    per_host = -(-weights // pp)  # one pipeline stage (an equal share of the layers) per host
    overhead = int(engine.engine_overhead_gib * GIB)
    # Each host's stage holds the KV cache of its own layers in its own KV space.
    per_token_host = -(-per_token // pp)
    longest = kv_space // per_token_host if per_token_host else 0
    # The KV space is allocated whole at start, whatever the context: it is what RAM must hold.
    est = Estimate(
        precision="bf16",
        context=ctx,
        devices=pp,
        weights_bytes=weights,
        weights_per_device=per_host,
        kv_bytes_per_token=per_token,
        kv_per_device=kv_space,
        overhead_per_device=overhead,
        required_per_device=per_host + kv_space + overhead,
        budget_per_device=int(engine.ram_fraction * layout.ram_bytes),
        max_context=min(longest, model.max_context or longest),
        sequences_at_context=kv_space // (per_token_host * ctx) if per_token_host else 0,
    )
    if per_token_host * ctx > kv_space:
        problems.append(
            f"one sequence of {ctx} tokens needs {per_token_host * ctx / GIB:.2f} GiB of KV cache"
            + (" per host" if pp > 1 else "")
            + f"; the profile's cpu_kvcache_space_gib is {engine.cpu_kvcache_space_gib}: raise it "
            f"or lower the context (--context {longest or ctx})"
        )
    return FitReport(
        profile=profile.name,
        model=model.name,
        layout=layout,
        quantization=None,
        estimate=est,
        problems=tuple(problems),
        notes=(
            *notes,
            f"KV cache: {engine.cpu_kvcache_space_gib} GiB of RAM (VLLM_CPU_KVCACHE_SPACE)",
        ),
        alternatives=(),
    )


def _blocked(
    profile: Profile, model: ModelInfo, notes: list[str], problems: list[str]
) -> FitReport:
    """A report for a plan that fails before any arithmetic is possible."""
    return FitReport(
        profile=profile.name,
        model=model.name,
        layout=None,
        quantization=None,
        estimate=None,
        problems=tuple(problems),
        notes=tuple(notes),
        alternatives=(),
    )


def _checkpoint_precision(model: ModelInfo) -> Literal["bf16", "fp8", "int4"]:
    family = (model.quantization or "").lower()
    if family.startswith("fp8"):
        return "fp8"
    if family:
        return "int4"
    return "bf16"


def _checkpoint_method(
    model: ModelInfo, engine: VllmEngine, cc: tuple[int, int]
) -> tuple[str | None, str | None]:
    """The --quantization method for this checkpoint, or a reason it cannot run here."""
    if model.quantization is None:
        if "none" not in engine.quantization:
            return None, "the profile allows only quantised checkpoints; this one is full precision"
        return "none", None
    family = model.quantization.lower()
    candidates = [m for m in _CHECKPOINT_METHODS.get(family, ()) if m in engine.quantization]
    runnable = [m for m in candidates if QUANT_MIN_CC[m] <= cc]
    if runnable:
        return runnable[0], None
    if candidates:
        return None, (
            f"the checkpoint is {family}-quantised; {candidates[0]} needs compute capability "
            f"{format_cc(QUANT_MIN_CC[candidates[0]])}, the GPUs have {format_cc(cc)}"
        )
    return None, (
        f"the checkpoint is quantised with {family!r}, which profile allows only as "
        f"{', '.join(engine.quantization)}"
    )


def _quantisation_alternatives(
    model: ModelInfo, engine: VllmEngine, layout: Layout, ctx: int, tried: str
) -> tuple[list[Alternative], list[str]]:
    """Each other precision the profile allows and the GPUs run: those that fit, and notes on those that do not."""
    found: list[Alternative] = []
    misses: list[str] = []
    seen = {QUANT_PRECISION[tried]}
    for method in engine.quantization:
        precision = QUANT_PRECISION[method]
        if precision in seen or QUANT_MIN_CC[method] > layout.compute_capability:
            continue
        seen.add(precision)
        est = gpu_estimate(
            model,
            engine,
            precision=precision,
            tp=layout.tensor_parallel,
            pp=layout.pipeline_parallel,
            memory_per_gpu=layout.memory_per_gpu_bytes,
            context=ctx,
        )
        if not est.fits:
            label = precision if method == precision else f"{precision} ({method})"
            misses.append(
                f"{label} would not fit either: {est.required_per_device / GIB:.1f} GiB "
                f"per GPU needed, {est.budget_per_device / GIB:.1f} GiB budget"
            )
            continue
        if method == "fp8":
            how = "--quantization fp8 (online, loads full precision first)"
        else:
            family = method.split("_")[0].upper()
            how = f"an {family} int4 checkpoint of this model (--quantization {method})"
        found.append(Alternative(what=f"quantization {method}", estimate=est, detail=how))
    return found, misses


def _fit_llamacpp(
    model: ModelInfo,
    profile: Profile,
    engine: LlamaCppEngine,
    hosts: tuple[HostFacts, ...],
    context: int | None,
) -> FitReport:
    ctx, notes = default_context(model, engine.context_length, context)
    layout = cpu_layout(hosts, engine.threads)
    problems: list[str] = []
    gguf_type: str = engine.quantization[0]
    if model.format == "gguf":
        gguf_type = model.checkpoint_dtype
        if gguf_type not in engine.quantization:
            notes.append(
                f"file type {gguf_type} is not among the profile's {', '.join(engine.quantization)}"
            )
    else:
        problems.append(
            f"llama.cpp serves GGUF files; {model.name} is a Hugging Face directory: convert it on the "
            f"connected side (convert_hf_to_gguf.py, then llama-quantize {gguf_type}); "
            f"the estimate below is for that {gguf_type} file"
        )
    est = cpu_estimate(model, engine, gguf_type=gguf_type, ram_bytes=layout.ram_bytes, context=ctx)
    alternatives: list[Alternative] = []
    if not est.fits:
        for other in engine.quantization:
            if GGUF_BITS_PER_WEIGHT[other] >= GGUF_BITS_PER_WEIGHT.get(gguf_type, 99):
                continue
            alt = cpu_estimate(
                model, engine, gguf_type=other, ram_bytes=layout.ram_bytes, context=ctx
            )
            if alt.fits:
                alternatives.append(
                    Alternative(f"GGUF {other}", alt, f"a {other} GGUF of this model")
                )
    return FitReport(
        profile=profile.name,
        model=model.name,
        layout=layout,
        quantization=None,
        estimate=est,
        problems=tuple(problems),
        notes=tuple(notes),
        alternatives=tuple(alternatives),
    )


def reference_fit(model: ModelInfo, profile: Profile, context: int | None) -> Alternative | None:
    """Would ``profile`` fit the model on the smallest hardware it matches? None if not."""
    engine, gpu = profile.engine, profile.match.gpu
    if not isinstance(engine, VllmEngine) or gpu is None or model.format != "hf":
        return None
    per_node = gpu.max_count_per_node or gpu.min_count_per_node
    memory = int(gpu.min_memory_gib * GIB)
    ctx, _ = default_context(model, engine.max_model_len, context)
    for nodes in range(gpu.nodes.min, gpu.nodes.max + 1):
        tp = _resolve(engine.tensor_parallel_size, per_node, nodes)
        pp = _resolve(engine.pipeline_parallel_size, per_node, nodes)
        if model.num_attention_heads % tp:
            return None
        for method in engine.quantization:
            if QUANT_MIN_CC[method] > gpu.min_compute_capability:
                continue
            precision = QUANT_PRECISION[method]
            est = gpu_estimate(
                model, engine, precision=precision, tp=tp, pp=pp, memory_per_gpu=memory, context=ctx
            )
            if est.fits:
                return Alternative(
                    what=f"profile {profile.name}",
                    estimate=est,
                    detail=(
                        f"{nodes} node(s) x {per_node} GPU(s) of at least {gpu.min_memory_gib:g} GiB, "
                        f"{precision}" + ("" if method == "none" else f" (--quantization {method})")
                    ),
                )
    return None


__all__ = ["BYTES_PER_PARAM", "GIB", "Alternative", "Estimate", "FitReport", "Layout", "fit_report"]

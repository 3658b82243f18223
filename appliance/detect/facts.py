"""Host facts: what detection found, as frozen plain data with a stable JSON form.

These are stdlib dataclasses on purpose: ``appliance detect --json`` builds and
prints them without importing pydantic (start-up time matters for a probe that
runs on every host). Reading a saved facts file back (``plan --facts``) goes
through ``appliance.detect.facts_file``, which validates them strictly with pydantic:
``__pydantic_config__`` below forbids unknown keys and coercion.

Units: bytes for sizes, never GiB floats. The schema is versioned by
``FACTS_SCHEMA_VERSION``; docs/facts.md documents every field and
``docs/facts.schema.json`` is generated from these classes (drift-tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

FACTS_SCHEMA_VERSION = 1

_STRICT: dict[str, Any] = {"extra": "forbid", "strict": True}

GpuStatus = Literal[
    "ok",  # NVML answered; ``gpus`` lists every device (may be empty)
    "no-nvidia-device",  # PCI bus scanned, no NVIDIA device: NVML not needed
    "library-not-found",  # libnvidia-ml.so.1 missing: driver not installed
    "driver-not-loaded",  # library present, kernel module not loaded
    "driver-library-mismatch",  # driver upgraded without reboot
    "no-permission",  # /dev/nvidia* not accessible to this user
    "gpu-lost",  # a device fell off the bus
    "error",  # any other NVML failure; ``message`` has the detail
]

# Link between two GPUs, in the vocabulary of ``nvidia-smi topo -m``:
# X self, NV NVLink peer-to-peer, PIX same PCIe switch, PXB several switches,
# PHB same host bridge, NODE same NUMA node, SYS across NUMA nodes, ? unknown.
Link = Literal["X", "NV", "PIX", "PXB", "PHB", "NODE", "SYS", "?"]


@dataclass(frozen=True, slots=True)
class GpuFacts:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT

    index: int
    name: str  # as NVML reports it, e.g. "NVIDIA H100 80GB HBM3"
    uuid: str
    pci_bus_id: str
    memory_total_bytes: int
    memory_free_bytes: int
    compute_capability: tuple[int, int]
    architecture: str  # "hopper", "ampere", "ada", ... or "unknown"
    mig_mode: Literal[
        "enabled", "disabled", "unsupported", "unknown"
    ]  # unknown: query failed, see warnings
    nvlink_active_links: int
    # Processes holding a CUDA context on the GPU (nvmlDeviceGetComputeRunningProcesses);
    # None when not recorded (facts from before this field, or NVML could not say).
    compute_processes: int | None = None


@dataclass(frozen=True, slots=True)
class GpuReport:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT

    status: GpuStatus
    message: str  # one plain sentence an operator can act on
    driver_version: str | None = None
    cuda_driver_version: str | None = None  # "12.4"
    gpus: tuple[GpuFacts, ...] = ()
    links: tuple[tuple[Link, ...], ...] = ()  # links[i][j], square, "X" on the diagonal
    warnings: tuple[str, ...] = ()  # optional queries that failed; the device is kept

    @property
    def usable(self) -> bool:
        return self.status == "ok" and len(self.gpus) > 0


@dataclass(frozen=True, slots=True)
class CpuFacts:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT

    model: str
    architecture: str  # platform.machine(): "x86_64", "aarch64"
    physical_cores: int
    logical_cores: int
    flags: tuple[str, ...]  # only those that matter for llama.cpp, sorted


@dataclass(frozen=True, slots=True)
class MemoryFacts:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT

    total_bytes: int
    available_bytes: int


@dataclass(frozen=True, slots=True)
class DiskFacts:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT

    path: str  # the install path asked about
    measured_at: str  # nearest existing ancestor, where the numbers come from
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True, slots=True)
class OsFacts:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT

    system: str  # "Linux"
    distribution: str  # PRETTY_NAME from /etc/os-release, or "unknown"
    kernel: str
    python: str


@dataclass(frozen=True, slots=True)
class HostFacts:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT

    hostname: str
    collected_at: str  # ISO 8601, UTC
    os: OsFacts
    cpu: CpuFacts
    memory: MemoryFacts
    disks: tuple[DiskFacts, ...]
    gpu: GpuReport
    # Size of /dev/shm (vLLM's workers share tensors through it); None: not measured
    # (no /dev/shm, or facts from before this field).
    shm_total_bytes: int | None = None
    # Of ``PROBED_LIBRARIES``, the shared libraries the host's dynamic linker finds
    # (``ldconfig -p``); None when not recorded (local facts, or facts from before the field).
    shared_libraries: tuple[str, ...] | None = None
    schema_version: int = FACTS_SCHEMA_VERSION
    tool_version: str = field(default="")

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


# Paths whose free space matters for an install (see brief.md host layout).
INSTALL_PATHS: tuple[str, ...] = ("/opt/appliance", "/var/lib/appliance", "/var/log/appliance")


def dump_facts_json(facts: HostFacts | Sequence[HostFacts]) -> str:
    """The stable JSON form (``appliance detect --json``): sorted keys, 2-space indent."""
    import json

    data: Any = (
        facts.to_json_dict() if isinstance(facts, HostFacts) else [f.to_json_dict() for f in facts]
    )
    return json.dumps(data, indent=2, sort_keys=True) + "\n"

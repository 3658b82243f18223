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
class InterfaceFacts:
    """One network interface as the host reports it (``ip -j addr``, or /sys/class/net)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT

    name: str  # "eth0", "ens1f0np0"
    mtu: int
    operstate: str  # lower case, as the kernel says it: "up", "down", "unknown", ...
    # IPv4 addresses with their prefix ("192.0.2.2/24"); None when not readable (no iproute2:
    # /sys/class/net has no addresses)
    ipv4: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class RdmaPortFacts:
    """One port of an RDMA device (/sys/class/infiniband/<device>/ports/<port>)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT

    device: str  # "mlx5_0"
    port: int
    state: str  # the word of the state file ("4: ACTIVE" -> "ACTIVE")
    link_layer: str  # "InfiniBand", "Ethernet" (RoCE) or "unknown"
    netdevs: tuple[str, ...] = ()  # the network interfaces of the device, where readable


@dataclass(frozen=True, slots=True)
class ClockFacts:
    """The host's clock against the deployer's, measured over the facts call.

    ``offset_ms``: host clock minus deployer clock (positive: the host is ahead), from the
    host's time and the midpoint of the deployer's window around the call;
    ``uncertainty_ms``: half that window (plus the host's own resolution): the true offset
    lies within ``offset_ms`` +- ``uncertainty_ms``."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT

    offset_ms: int
    uncertainty_ms: int


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
    # Network interfaces (remote hosts: ``ip -j addr``, else /sys/class/net); None when not
    # recorded (local facts, or facts from before the field).
    interfaces: tuple[InterfaceFacts, ...] | None = None
    # RDMA ports under /sys/class/infiniband (empty: none); None when not recorded.
    rdma_ports: tuple[RdmaPortFacts, ...] | None = None
    # The nvidia_peermem module (GPUDirect RDMA) is loaded; None when not recorded.
    nvidia_peermem: bool | None = None
    # Of ``PROBED_COMPILERS``, those on the SSH user's PATH (torch.compile's C++ code and
    # Triton's launchers are compiled on the host); None when not recorded.
    compilers: tuple[str, ...] | None = None
    # The host's clock against the deployer's (remote facts with a measured window); None
    # when not recorded.
    clock: ClockFacts | None = None
    schema_version: int = FACTS_SCHEMA_VERSION
    tool_version: str = field(default="")

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


# Compilers torch.compile needs when vLLM runs compiled (no --enforce-eager): Triton's
# launcher build looks for clang, then gcc (triton/runtime/build.py, CC unset); inductor's
# C++ code (the CPU build) for g++ (torch/_inductor/config.py cpp.cxx, CXX unset).
PROBED_COMPILERS: tuple[str, ...] = ("clang", "clang++", "g++", "gcc")
C_COMPILERS: tuple[str, ...] = ("clang", "gcc")
CXX_COMPILERS: tuple[str, ...] = ("g++",)


# Paths whose free space matters for an install (see brief.md host layout).
INSTALL_PATHS: tuple[str, ...] = ("/opt/appliance", "/var/lib/appliance", "/var/log/appliance")


def dump_facts_json(facts: HostFacts | Sequence[HostFacts]) -> str:
    """The stable JSON form (``appliance detect --json``): sorted keys, 2-space indent."""
    import json

    data: Any = (
        facts.to_json_dict() if isinstance(facts, HostFacts) else [f.to_json_dict() for f in facts]
    )
    return json.dumps(data, indent=2, sort_keys=True) + "\n"

"""NVIDIA GPU probe: PCI pre-check in sysfs, then NVML, into a frozen ``GpuReport``.

Job: say which NVIDIA GPUs this host has, how they are linked, and -- when
none can be used -- exactly why, in one sentence an operator can act on.

Invariants:
- Never raises for an NVML failure: every failure becomes a ``GpuReport``
  status plus message, so the rest of the host is still reported.
- ``pynvml`` is imported only when the PCI bus shows an NVIDIA device or
  cannot be read (importing it costs ~30 ms on every ``detect``).
- ``nvmlShutdown`` runs after every successful ``nvmlInit``.
- One failing optional query never loses a device: it is recorded in
  ``warnings`` and a neutral value is used.
- Errors are matched by the exception classes the ``nvml`` module exposes
  (``nvml.NVMLError_NotSupported``...), so a test fake that exposes the same
  names runs through exactly this code.
- No printing, no environment variables, no module-level caches.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from appliance.detect.facts import GpuFacts, GpuReport, GpuStatus, Link

PCI_DEVICES_DIR = Path("/sys/bus/pci/devices")
NVIDIA_PCI_VENDOR = "0x10de"
_DISPLAY_CLASS_PREFIX = "0x03"  # PCI base class 0x03: VGA (0x0300) and 3D controller (0x0302)

_T = TypeVar("_T")

# NVML_DEVICE_ARCH_* constant name suffix -> architecture name we report.
_ARCH_NAMES: dict[str, str] = {
    "KEPLER": "kepler",
    "MAXWELL": "maxwell",
    "PASCAL": "pascal",
    "VOLTA": "volta",
    "TURING": "turing",
    "AMPERE": "ampere",
    "ADA": "ada",
    "HOPPER": "hopper",
    "BLACKWELL": "blackwell",
    "RUBIN": "rubin",
}

# NVML_TOPOLOGY_* constant name suffix -> ``nvidia-smi topo -m`` vocabulary.
# INTERNAL means both GPUs sit on one board (e.g. a dual-GPU card): that is
# at least as close as a shared PCIe switch, so it reads as PIX.
_TOPOLOGY_LINKS: dict[str, Link] = {
    "INTERNAL": "PIX",
    "SINGLE": "PIX",
    "MULTIPLE": "PXB",
    "HOSTBRIDGE": "PHB",
    "NODE": "NODE",
    "SYSTEM": "SYS",
}


# --------------------------------------------------------------------------- PCI pre-check


@dataclass(frozen=True, slots=True)
class PciScan:
    """What sysfs says about the PCI bus; ``conclusive`` False means "ask NVML"."""

    directory: Path
    devices_scanned: int
    nvidia_display_devices: tuple[str, ...]
    conclusive: bool


def scan_pci(pci_devices_dir: Path = PCI_DEVICES_DIR) -> PciScan:
    """List NVIDIA display/3D-class devices under ``pci_devices_dir``.

    The scan is conclusive only when the directory lists devices and every
    vendor and class file could be read: a container with an empty or
    partial sysfs must not hide a GPU that NVML can see.
    """
    try:
        entries = sorted(p for p in pci_devices_dir.iterdir())
    except OSError:
        return PciScan(pci_devices_dir, 0, (), conclusive=False)
    nvidia: list[str] = []
    readable = True
    for entry in entries:
        try:
            vendor = (entry / "vendor").read_text(encoding="ascii").strip().lower()
            pci_class = (entry / "class").read_text(encoding="ascii").strip().lower()
        except (OSError, UnicodeDecodeError):
            readable = False
            continue
        if vendor == NVIDIA_PCI_VENDOR and pci_class.startswith(_DISPLAY_CLASS_PREFIX):
            nvidia.append(entry.name)
    return PciScan(
        pci_devices_dir,
        len(entries),
        tuple(nvidia),
        conclusive=bool(entries) and readable,
    )


# --------------------------------------------------------------------------- entry point


def probe_gpus(nvml: Any | None = None, pci_devices_dir: Path = PCI_DEVICES_DIR) -> GpuReport:
    """Report the NVIDIA GPUs of this host.

    ``nvml`` is a module-like object with the ``pynvml`` API; ``None`` imports
    ``pynvml`` lazily, and only if the PCI pre-check cannot rule GPUs out.
    """
    scan = scan_pci(pci_devices_dir)
    if scan.conclusive and not scan.nvidia_display_devices:
        noun = "device" if scan.devices_scanned == 1 else "devices"
        return GpuReport(
            status="no-nvidia-device",
            message=(
                f"No NVIDIA GPU on the PCI bus (scanned {scan.devices_scanned} {noun} "
                f"in {scan.directory}); NVML was not needed."
            ),
        )
    if nvml is None:
        try:
            import pynvml
        except ImportError:
            return GpuReport(
                status="error",
                message=(
                    "The Python package nvidia-ml-py (module pynvml) is not importable, so "
                    "GPUs cannot be queried: reinstall appliance with its dependencies."
                ),
            )
        nvml = pynvml
    return _probe_nvml(nvml, scan)


# --------------------------------------------------------------------------- NVML


class _NvmlStep:
    """Names the NVML call in flight, so an unexpected error message can cite it."""

    def __init__(self) -> None:
        self.name = "nvmlInit"


def _probe_nvml(nvml: Any, scan: PciScan) -> GpuReport:
    step = _NvmlStep()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return _failure_report(nvml, exc, step.name, scan)
    try:
        return _collect(nvml, step)
    except nvml.NVMLError as exc:
        return _failure_report(nvml, exc, step.name, scan)
    finally:
        # The report is already built; a failed shutdown changes nothing in it.
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def _is(nvml: Any, exc: BaseException, suffix: str) -> bool:
    cls = getattr(nvml, f"NVMLError_{suffix}", None)
    return isinstance(cls, type) and isinstance(exc, cls)


def _failure_report(nvml: Any, exc: BaseException, step: str, scan: PciScan) -> GpuReport:
    status, message = _failure(nvml, exc, step, scan)
    return GpuReport(status=status, message=message)


def _failure(nvml: Any, exc: BaseException, step: str, scan: PciScan) -> tuple[GpuStatus, str]:
    seen = ""
    if scan.nvidia_display_devices:
        n = len(scan.nvidia_display_devices)
        seen = f" although {n} NVIDIA GPU{'s are' if n > 1 else ' is'} on the PCI bus"
    if _is(nvml, exc, "LibraryNotFound"):
        if seen:
            return "library-not-found", (
                f"The NVIDIA driver library libnvidia-ml.so.1 is not installed{seen}: "
                "install the NVIDIA driver on this host, then run detect again."
            )
        return "library-not-found", (
            "The NVIDIA driver library libnvidia-ml.so.1 is not installed, so no GPU can be "
            "used: install the NVIDIA driver if this host has NVIDIA GPUs, otherwise plan "
            "for CPU only."
        )
    if _is(nvml, exc, "DriverNotLoaded"):
        return "driver-not-loaded", (
            f"The NVIDIA kernel driver is not loaded{seen}: run `modprobe nvidia` as root "
            "(check `dmesg` if it fails) or reboot, then run detect again."
        )
    if _is(nvml, exc, "LibRmVersionMismatch"):
        return "driver-library-mismatch", (
            "The loaded NVIDIA kernel module and libnvidia-ml.so are different versions "
            "(the driver was upgraded without a reboot): reboot the host, or unload and "
            "reload the nvidia kernel modules, then run detect again."
        )
    if _is(nvml, exc, "NoPermission"):
        return "no-permission", (
            "NVML was denied access to the GPUs: run detect as root or as a user allowed to "
            "open /dev/nvidia* (check the device permissions and groups), then run again."
        )
    if _is(nvml, exc, "GpuIsLost"):
        return "gpu-lost", (
            f"A GPU has fallen off the bus (NVML: GPU is lost, during {step}): check `dmesg` "
            "for Xid errors and reboot the host before installing onto it."
        )
    return "error", (
        f"NVML failed during {step} with '{exc}': check that `nvidia-smi` works on this "
        "host, then run detect again."
    )


def _text(value: Any) -> str:
    """NVML returns str in current bindings and bytes in old ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00")
    return str(value)


def _cuda_version(value: int) -> str:
    # NVML encodes CUDA versions as 1000 * major + 10 * minor (12040 -> 12.4).
    return f"{value // 1000}.{(value % 1000) // 10}"


@dataclass(slots=True)
class _Collector:
    """Per-probe state: the module, the current step, and warnings for optional queries."""

    nvml: Any
    step: _NvmlStep
    warnings: list[str]

    def optional(self, what: str, call: Callable[[], _T], default: _T) -> _T:
        """Run an optional query; NotSupported or any other NVML error gives ``default``.

        ``GpuIsLost`` is not optional: it propagates so the device is reported lost.
        """
        try:
            return call()
        except self.nvml.NVMLError as exc:
            if _is(self.nvml, exc, "GpuIsLost"):
                raise
            self.warnings.append(f"{what}: {exc}")
            return default


def _collect(nvml: Any, step: _NvmlStep) -> GpuReport:
    col = _Collector(nvml, step, [])

    step.name = "nvmlSystemGetDriverVersion"
    driver: str | None = col.optional(
        "driver version", lambda: _text(nvml.nvmlSystemGetDriverVersion()), None
    )
    step.name = "nvmlSystemGetCudaDriverVersion"
    cuda: str | None = col.optional(
        "CUDA driver version",
        lambda: _cuda_version(int(nvml.nvmlSystemGetCudaDriverVersion())),
        None,
    )

    step.name = "nvmlDeviceGetCount"
    count = int(nvml.nvmlDeviceGetCount())

    gpus: list[GpuFacts] = []
    handles: list[Any] = []
    lost: list[int] = []
    for index in range(count):
        step.name = f"nvmlDeviceGetHandleByIndex({index})"
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(_device(col, index, handle))
        except nvml.NVMLError as exc:
            if not _is(nvml, exc, "GpuIsLost"):
                raise
            lost.append(index)
            continue
        handles.append(handle)

    step.name = "topology"
    links = _links(col, handles)

    if lost:
        names = ", ".join(str(i) for i in lost)
        plural = "s" if len(lost) > 1 else ""
        return GpuReport(
            status="gpu-lost",
            message=(
                f"GPU{plural} {names} fell off the bus (NVML: GPU is lost); {len(gpus)} other "
                f"GPU{'s' if len(gpus) != 1 else ''} answered: check `dmesg` for Xid errors and "
                "reboot the host before installing onto it."
            ),
            driver_version=driver,
            cuda_driver_version=cuda,
            gpus=tuple(gpus),
            links=links,
            warnings=tuple(col.warnings),
        )
    return GpuReport(
        status="ok",
        message=_ok_message(gpus, driver, cuda),
        driver_version=driver,
        cuda_driver_version=cuda,
        gpus=tuple(gpus),
        links=links,
        warnings=tuple(col.warnings),
    )


def _ok_message(gpus: list[GpuFacts], driver: str | None, cuda: str | None) -> str:
    versions = ", ".join(
        part
        for part in (
            f"driver {driver}" if driver else "",
            f"CUDA {cuda}" if cuda else "",
        )
        if part
    )
    suffix = f" ({versions})" if versions else ""
    if not gpus:
        return (
            f"NVML works{suffix} but reports no GPU: check `nvidia-smi`, and that the GPUs "
            "are not hidden from this host or container."
        )
    models = Counter(g.name for g in gpus)
    listing = ", ".join(f"{n}x {name}" for name, n in models.items())
    noun = "GPU" if len(gpus) == 1 else "GPUs"
    return f"{len(gpus)} NVIDIA {noun} found: {listing}{suffix}."


def _device(col: _Collector, index: int, handle: Any) -> GpuFacts:
    nvml = col.nvml
    tag = f"GPU {index}"
    col.step.name = f"device queries on GPU {index}"

    name = col.optional(f"{tag} name", lambda: _text(nvml.nvmlDeviceGetName(handle)), "unknown")
    uuid = col.optional(f"{tag} UUID", lambda: _text(nvml.nvmlDeviceGetUUID(handle)), "")
    pci_bus_id = col.optional(
        f"{tag} PCI info", lambda: _text(nvml.nvmlDeviceGetPciInfo(handle).busId), ""
    )
    total, free = col.optional(f"{tag} memory", lambda: _memory(nvml, handle), (0, 0))
    cc = col.optional(
        f"{tag} compute capability",
        lambda: _compute_capability(nvml.nvmlDeviceGetCudaComputeCapability(handle)),
        (0, 0),
    )
    arch = col.optional(
        f"{tag} architecture",
        lambda: architecture_name(nvml, int(nvml.nvmlDeviceGetArchitecture(handle))),
        "unknown",
    )
    mig = _mig_mode(col, tag, handle)
    nvlinks = _nvlink_active_links(col, tag, handle)
    processes = _compute_processes(col, tag, handle)
    return GpuFacts(
        index=index,
        name=name,
        uuid=uuid,
        pci_bus_id=pci_bus_id,
        memory_total_bytes=total,
        memory_free_bytes=free,
        compute_capability=cc,
        architecture=arch,
        mig_mode=mig,
        nvlink_active_links=nvlinks,
        compute_processes=processes,
    )


def _compute_capability(value: Any) -> tuple[int, int]:
    major, minor = value
    return int(major), int(minor)


def _memory(nvml: Any, handle: Any) -> tuple[int, int]:
    """Total and free bytes; v2 first (it separates driver-reserved memory), then v1.

    v1 is used when the driver predates ``nvmlDeviceGetMemoryInfo_v2``
    (FunctionNotFound) or the binding predates its ``version`` argument.
    """
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            info = nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
            return int(info.total), int(info.free)
        except TypeError:
            pass  # old binding: no ``version`` keyword
        except nvml.NVMLError as exc:
            if not _is(nvml, exc, "FunctionNotFound"):
                raise
    info = nvml.nvmlDeviceGetMemoryInfo(handle)
    return int(info.total), int(info.free)


def architecture_name(nvml: Any, value: int) -> str:
    """Map an ``nvmlDeviceGetArchitecture`` value to a lower-case name, or "unknown"."""
    for suffix, name in _ARCH_NAMES.items():
        if getattr(nvml, f"NVML_DEVICE_ARCH_{suffix}", None) == value:
            return name
    return "unknown"


def topology_link(nvml: Any, level: int) -> Link:
    """Map an ``nvmlDeviceGetTopologyCommonAncestor`` level to ``nvidia-smi topo`` terms."""
    for suffix, link in _TOPOLOGY_LINKS.items():
        if getattr(nvml, f"NVML_TOPOLOGY_{suffix}", None) == level:
            return link
    return "?"


def _mig_mode(
    col: _Collector, tag: str, handle: Any
) -> Literal["enabled", "disabled", "unsupported", "unknown"]:
    nvml = col.nvml
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError as exc:
        if _is(nvml, exc, "GpuIsLost"):
            raise
        if _is(nvml, exc, "NotSupported"):
            return "unsupported"
        col.warnings.append(f"{tag} MIG mode: {exc}")
        return "unknown"
    return "enabled" if current == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1) else "disabled"


def _compute_processes(col: _Collector, tag: str, handle: Any) -> int | None:
    """How many processes hold a CUDA context on the GPU; None where NVML cannot say
    (NotSupported, e.g. inside some containers: no warning, like MIG on consumer cards)."""
    nvml = col.nvml
    try:
        return len(nvml.nvmlDeviceGetComputeRunningProcesses(handle))
    except nvml.NVMLError as exc:
        if _is(nvml, exc, "GpuIsLost"):
            raise
        if not _is(nvml, exc, "NotSupported"):
            col.warnings.append(f"{tag} compute processes: {exc}")
        return None


def _nvlink_active_links(col: _Collector, tag: str, handle: Any) -> int:
    nvml = col.nvml
    active = 0
    enabled = getattr(nvml, "NVML_FEATURE_ENABLED", 1)
    for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
        try:
            state = nvml.nvmlDeviceGetNvLinkState(handle, link)
        except nvml.NVMLError as exc:
            if _is(nvml, exc, "GpuIsLost"):
                raise
            # NotSupported / InvalidArgument mark the end of the device's links
            # (or a device without NVLink); anything else is worth a warning.
            if not (_is(nvml, exc, "NotSupported") or _is(nvml, exc, "InvalidArgument")):
                col.warnings.append(f"{tag} NVLink {link} state: {exc}")
            break
        if state == enabled:
            active += 1
    return active


def _links(col: _Collector, handles: list[Any]) -> tuple[tuple[Link, ...], ...]:
    """Square link matrix, symmetric, "X" on the diagonal (like ``nvidia-smi topo -m``)."""
    n = len(handles)
    matrix: list[list[Link]] = [["X" if i == j else "?" for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            link = _pair_link(col, i, j, handles[i], handles[j])
            matrix[i][j] = matrix[j][i] = link
    return tuple(tuple(row) for row in matrix)


def _pair_link(col: _Collector, i: int, j: int, a: Any, b: Any) -> Link:
    nvml = col.nvml
    try:
        status = nvml.nvmlDeviceGetP2PStatus(a, b, nvml.NVML_P2P_CAPS_INDEX_NVLINK)
        if status == nvml.NVML_P2P_STATUS_OK:
            return "NV"
    except nvml.NVMLError:
        pass  # no NVLink P2P answer: the PCIe topology below still describes the pair
    try:
        level = nvml.nvmlDeviceGetTopologyCommonAncestor(a, b)
    except nvml.NVMLError as exc:
        col.warnings.append(f"GPU {i}-{j} topology: {exc}")
        return "?"
    return topology_link(nvml, int(level))

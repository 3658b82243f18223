"""Collect ``HostFacts`` for this machine: CPU, memory, disks, OS and GPUs.

Job: one call, ``detect_host()``, that gathers everything ``plan`` needs to
know about a host and returns it as frozen data (``appliance.detect.facts``).

Invariants:
- Fast start: this module imports neither pydantic, rich nor argparse
  (``appliance detect --json`` runs on every host; a subprocess test guards
  it). psutil and pynvml are imported only when used.
- Raw IO is behind ``HostProbe`` (a dataclass of callables) and file roots
  passed as arguments; parsing is pure (``parse_cpuinfo``,
  ``parse_os_release``), so tests feed recorded values without a mock library.
- Never prints, never sets environment variables, caches nothing globally.
- A missing or unreadable source degrades one field ("unknown", 0 or an
  omitted disk), never the whole report.
"""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.detect.cpu import UNKNOWN_MODEL, parse_cpuinfo
from appliance.detect.facts import (
    INSTALL_PATHS,
    CpuFacts,
    DiskFacts,
    HostFacts,
    MemoryFacts,
    OsFacts,
)
from appliance.detect.nvml_probe import PCI_DEVICES_DIR, probe_gpus
from appliance.errors import InputError
from appliance.input_files import MiB, read_input

# /proc/cpuinfo of a many-core host is about 2 KiB a core.
_MAX_HOST_FILE = 16 * MiB


@dataclass(frozen=True, slots=True)
class HostProbe:
    """The OS calls ``detect_host`` makes, so tests can substitute fixed numbers.

    Sizes are bytes. ``cpu_count(logical)`` may return None (psutil does when
    it cannot tell, e.g. physical cores in some containers).
    """

    cpu_count: Callable[[bool], int | None]
    memory: Callable[[], tuple[int, int]]  # (total, available)
    disk_usage: Callable[[str], tuple[int, int]]  # path -> (total, free)
    path_exists: Callable[[str], bool]
    hostname: Callable[[], str]
    system: Callable[[], str]
    kernel: Callable[[], str]
    machine: Callable[[], str]
    python_version: Callable[[], str]


def real_probe() -> HostProbe:
    """``HostProbe`` backed by psutil, os, socket and platform on this machine."""
    import psutil

    def cpu_count(logical: bool) -> int | None:
        count: int | None = psutil.cpu_count(logical=logical)
        return count

    def memory() -> tuple[int, int]:
        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)

    def disk_usage(path: str) -> tuple[int, int]:
        usage = psutil.disk_usage(path)
        return int(usage.total), int(usage.free)

    return HostProbe(
        cpu_count=cpu_count,
        memory=memory,
        disk_usage=disk_usage,
        path_exists=os.path.exists,
        hostname=socket.gethostname,
        system=platform.system,
        kernel=platform.release,
        machine=platform.machine,
        python_version=platform.python_version,
    )


def parse_os_release(text: str) -> str:
    """Distribution name from os-release text: PRETTY_NAME, else NAME VERSION, else "unknown"."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        values[key.strip()] = value
    if values.get("PRETTY_NAME"):
        return values["PRETTY_NAME"]
    name = " ".join(v for v in (values.get("NAME"), values.get("VERSION")) if v)
    return name or "unknown"


def _read_text(path: Path) -> str | None:
    # Through the bounded reader: a FIFO or device at that path never hangs the probe.
    try:
        data = read_input(path, "host file", limit=_MAX_HOST_FILE)
    except InputError:
        return None
    return data.decode("utf-8", errors="replace")


def _nearest_existing(path: str, exists: Callable[[str], bool]) -> str:
    """The path itself or its closest existing ancestor (install dirs may not exist yet)."""
    current = Path(path)
    while not exists(str(current)) and current != current.parent:
        current = current.parent
    return str(current)


def _disks(paths: Sequence[str], probe: HostProbe) -> tuple[DiskFacts, ...]:
    disks: list[DiskFacts] = []
    for path in paths:
        measured_at = _nearest_existing(path, probe.path_exists)
        try:
            total, free = probe.disk_usage(measured_at)
        except OSError:
            continue  # unreadable mount: plan reports the path as unknown rather than 0 free
        disks.append(
            DiskFacts(path=path, measured_at=measured_at, total_bytes=total, free_bytes=free)
        )
    return tuple(disks)


SHM_PATH = "/dev/shm"


def _shm_total(probe: HostProbe) -> int | None:
    """Size of /dev/shm (a tmpfs; its size is the bound), None where there is none."""
    if not probe.path_exists(SHM_PATH):
        return None
    try:
        total, _free = probe.disk_usage(SHM_PATH)
    except OSError:
        return None
    return total


def _os(proc_root: Path, probe: HostProbe) -> OsFacts:
    text = _read_text(proc_root / "etc/os-release") or _read_text(proc_root / "usr/lib/os-release")
    return OsFacts(
        system=probe.system(),
        distribution=parse_os_release(text) if text is not None else "unknown",
        kernel=probe.kernel(),
        python=probe.python_version(),
    )


def _cpu(proc_root: Path, probe: HostProbe) -> CpuFacts:
    text = _read_text(proc_root / "proc/cpuinfo")
    model, flags = parse_cpuinfo(text) if text is not None else (UNKNOWN_MODEL, ())
    logical = probe.cpu_count(True) or os.cpu_count() or 1
    physical = probe.cpu_count(False) or logical
    return CpuFacts(
        model=model,
        architecture=probe.machine(),
        physical_cores=physical,
        logical_cores=logical,
        flags=flags,
    )


def detect_host(
    *,
    nvml: Any | None = None,
    pci_devices_dir: Path = PCI_DEVICES_DIR,
    proc_root: Path = Path("/"),
    install_paths: Sequence[str] = INSTALL_PATHS,
    now: datetime | None = None,
    probe: HostProbe | None = None,
) -> HostFacts:
    """Gather the facts of this host (or of the fixtures the arguments point at).

    ``proc_root`` is where ``proc/cpuinfo`` and ``etc/os-release`` are read;
    ``nvml`` and ``pci_devices_dir`` go to ``probe_gpus``; ``now`` fixes
    ``collected_at`` (UTC); ``probe`` replaces the psutil/os calls.
    """
    probe = probe if probe is not None else real_probe()
    collected = (now if now is not None else datetime.now(UTC)).astimezone(UTC)
    total, available = probe.memory()
    return HostFacts(
        hostname=probe.hostname(),
        collected_at=collected.isoformat(timespec="seconds"),
        os=_os(proc_root, probe),
        cpu=_cpu(proc_root, probe),
        memory=MemoryFacts(total_bytes=total, available_bytes=available),
        disks=_disks(install_paths, probe),
        shm_total_bytes=_shm_total(probe),
        gpu=probe_gpus(nvml, pci_devices_dir),
        tool_version=__version__,
    )

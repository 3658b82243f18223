"""FakePynvml: a FAKE, in-memory stand-in for the ``pynvml`` module, for tests only.

It replays a recorded host (``tests/fixtures/nvml/*.json``) through the same
function names, constants and exception classes as ``pynvml`` (the constants
and ``NVMLError_*`` classes are pynvml's own objects), so
``appliance.detect.nvml_probe`` runs the identical code path against it.
No real NVML library is loaded and no real NVML function is ever reachable
through the fake: an unimplemented ``nvml*`` function raises AttributeError.

Fixture shape (values are what each NVML call returns; any value may instead be
``{"raise": "<suffix>"}`` to raise ``pynvml.NVMLError_<suffix>``)::

    {
      "_comment": "where the values come from",
      "sysfs_pci_devices": [["0000:1b:00.0", "0x10de", "0x030200"], ...],
      "nvmlInit": null,                       # or {"raise": "LibraryNotFound"}
      "nvmlSystemGetDriverVersion": "550.54.15",
      "nvmlSystemGetCudaDriverVersion": 12040,
      "nvmlDeviceGetCount": 8,                # optional: defaults to len(devices)
      "devices": [{
        "nvmlDeviceGetHandleByIndex": null,   # optional: {"raise": "GpuIsLost"}
        "nvmlDeviceGetName": "NVIDIA H100 80GB HBM3",
        "nvmlDeviceGetUUID": "GPU-...",
        "nvmlDeviceGetPciInfo": {"busId": "00000000:1B:00.0", ...},
        "nvmlDeviceGetMemoryInfo": {"total": ..., "free": ..., "used": ...},
        "nvmlDeviceGetMemoryInfo_v2": {"version": ..., "total": ..., "reserved": ...,
                                       "free": ..., "used": ...},
        "nvmlDeviceGetCudaComputeCapability": [9, 0],
        "nvmlDeviceGetArchitecture": 9,
        "nvmlDeviceGetMigMode": [0, 0],       # [current, pending]
        "nvmlDeviceGetNvLinkState": [1, 1, ...],  # per link; past the end: InvalidArgument
        "nvmlDeviceGetComputeRunningProcesses": [{"pid": 4242, "usedGpuMemory": ...}]
                                              # optional: not recorded -> NotSupported
      }, ...],
      "nvmlDeviceGetP2PStatus_NVLINK": [[null, 0, ...], ...],   # NVML_P2P_STATUS_*
      "nvmlDeviceGetTopologyCommonAncestor": [[null, 40, ...], ...]  # NVML_TOPOLOGY_*
    }
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml

NVML_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nvml"


@dataclass(frozen=True)
class FakeHandle:
    """Opaque device handle, like ``pynvml.c_nvmlDevice_t``."""

    index: int


def load_nvml_fixture(name: str) -> dict[str, Any]:
    """Read ``tests/fixtures/nvml/<name>.json`` (``name`` without suffix)."""
    data: dict[str, Any] = json.loads((NVML_FIXTURES / f"{name}.json").read_text("utf-8"))
    return data


def write_pci_tree(root: Path, devices: list[list[str]] | list[tuple[str, str, str]]) -> Path:
    """Write a fake ``/sys/bus/pci/devices`` tree: one dir per device with vendor and class."""
    root.mkdir(parents=True, exist_ok=True)
    for address, vendor, pci_class in devices:
        device = root / address
        device.mkdir()
        (device / "vendor").write_text(f"{vendor}\n", encoding="ascii")
        (device / "class").write_text(f"{pci_class}\n", encoding="ascii")
    return root


class FakePynvml:
    """FAKE pynvml module replaying one recorded host; records every call in ``calls``.

    ``strings_as_bytes`` mimics old bindings that returned ``bytes``;
    ``memory_version_kwarg=False`` mimics bindings whose
    ``nvmlDeviceGetMemoryInfo`` has no ``version`` argument (raises TypeError).
    """

    def __init__(
        self,
        fixture: dict[str, Any] | str,
        *,
        strings_as_bytes: bool = False,
        memory_version_kwarg: bool = True,
    ) -> None:
        data = load_nvml_fixture(fixture) if isinstance(fixture, str) else fixture
        self._data: dict[str, Any] = copy.deepcopy(data)
        self._bytes = strings_as_bytes
        self._memory_kwarg = memory_version_kwarg
        self.calls: list[str] = []
        self.init_count = 0
        self.shutdown_count = 0

    # Constants and exception classes are pynvml's own objects; functions are not.
    def __getattr__(self, name: str) -> Any:
        if name.startswith(("NVML_", "NVMLError")) or name in ("nvmlMemory_v1", "nvmlMemory_v2"):
            return getattr(pynvml, name)
        raise AttributeError(f"FakePynvml does not implement {name}")

    # -- helpers
    @staticmethod
    def _error(suffix: str) -> Exception:
        cls = getattr(pynvml, f"NVMLError_{suffix}")
        error: Exception = cls()
        return error

    def _value(self, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"raise"}:
            raise self._error(value["raise"])
        return value

    def _check_init(self) -> None:
        if self.init_count <= self.shutdown_count:
            raise self._error("Uninitialized")

    def _device(self, handle: FakeHandle) -> dict[str, Any]:
        self._check_init()
        device: dict[str, Any] = self._data["devices"][handle.index]
        return device

    def _device_value(self, handle: FakeHandle, call: str) -> Any:
        return self._value(self._device(handle)[call])

    def _str(self, value: str) -> str | bytes:
        return value.encode() if self._bytes else value

    # -- library
    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        self._value(self._data.get("nvmlInit"))
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        self.calls.append("nvmlShutdown")
        self._check_init()
        self.shutdown_count += 1

    # -- system
    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        self.calls.append("nvmlSystemGetDriverVersion")
        self._check_init()
        return self._str(self._value(self._data["nvmlSystemGetDriverVersion"]))

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self.calls.append("nvmlSystemGetCudaDriverVersion")
        self._check_init()
        version: int = self._value(self._data["nvmlSystemGetCudaDriverVersion"])
        return version

    # -- devices
    def nvmlDeviceGetCount(self) -> int:
        self.calls.append("nvmlDeviceGetCount")
        self._check_init()
        count: int = self._value(self._data.get("nvmlDeviceGetCount", len(self._data["devices"])))
        return count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self.calls.append(f"nvmlDeviceGetHandleByIndex({index})")
        self._check_init()
        devices = self._data["devices"]
        if not 0 <= index < len(devices):
            raise self._error("InvalidArgument")
        self._value(devices[index].get("nvmlDeviceGetHandleByIndex"))
        return FakeHandle(index)

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str | bytes:
        self.calls.append("nvmlDeviceGetName")
        return self._str(self._device_value(handle, "nvmlDeviceGetName"))

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str | bytes:
        self.calls.append("nvmlDeviceGetUUID")
        return self._str(self._device_value(handle, "nvmlDeviceGetUUID"))

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> SimpleNamespace:
        self.calls.append("nvmlDeviceGetPciInfo")
        info = dict(self._device_value(handle, "nvmlDeviceGetPciInfo"))
        # The real structure's char-array fields always come back as bytes.
        info["busId"] = info["busId"].encode()
        return SimpleNamespace(**info)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle, version: int | None = None) -> Any:
        if version is not None and not self._memory_kwarg:
            raise TypeError("nvmlDeviceGetMemoryInfo() got an unexpected keyword argument")
        if version:
            self.calls.append("nvmlDeviceGetMemoryInfo_v2")
            return SimpleNamespace(**self._device_value(handle, "nvmlDeviceGetMemoryInfo_v2"))
        self.calls.append("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(**self._device_value(handle, "nvmlDeviceGetMemoryInfo"))

    def nvmlDeviceGetCudaComputeCapability(self, handle: FakeHandle) -> tuple[int, int]:
        self.calls.append("nvmlDeviceGetCudaComputeCapability")
        major, minor = self._device_value(handle, "nvmlDeviceGetCudaComputeCapability")
        return int(major), int(minor)

    def nvmlDeviceGetArchitecture(self, handle: FakeHandle) -> int:
        self.calls.append("nvmlDeviceGetArchitecture")
        arch: int = self._device_value(handle, "nvmlDeviceGetArchitecture")
        return arch

    def nvmlDeviceGetMigMode(self, handle: FakeHandle) -> list[int]:
        self.calls.append("nvmlDeviceGetMigMode")
        return list(self._device_value(handle, "nvmlDeviceGetMigMode"))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[SimpleNamespace]:
        self.calls.append("nvmlDeviceGetComputeRunningProcesses")
        device = self._device(handle)
        if "nvmlDeviceGetComputeRunningProcesses" not in device:
            raise self._error("NotSupported")  # an older recording: the query was not made
        processes = self._value(device["nvmlDeviceGetComputeRunningProcesses"])
        return [SimpleNamespace(**p) for p in processes]

    def nvmlDeviceGetNvLinkState(self, handle: FakeHandle, link: int) -> int:
        self.calls.append(f"nvmlDeviceGetNvLinkState({link})")
        states = self._device_value(handle, "nvmlDeviceGetNvLinkState")
        if not 0 <= link < len(states):
            raise self._error("InvalidArgument")
        state: int = self._value(states[link])
        return state

    def _pair(self, key: str, a: FakeHandle, b: FakeHandle) -> int:
        self._check_init()
        value: int = self._value(self._data[key][a.index][b.index])
        return value

    def nvmlDeviceGetP2PStatus(self, a: FakeHandle, b: FakeHandle, index: int) -> int:
        self.calls.append("nvmlDeviceGetP2PStatus")
        if index != pynvml.NVML_P2P_CAPS_INDEX_NVLINK:
            raise self._error("NotSupported")  # only the NVLink capability is recorded
        return self._pair("nvmlDeviceGetP2PStatus_NVLINK", a, b)

    def nvmlDeviceGetTopologyCommonAncestor(self, a: FakeHandle, b: FakeHandle) -> int:
        self.calls.append("nvmlDeviceGetTopologyCommonAncestor")
        return self._pair("nvmlDeviceGetTopologyCommonAncestor", a, b)


class ForbiddenNvml:
    """An ``nvml`` argument that fails loudly if the probe touches it at all."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"NVML must not be used here (accessed {name})")


def recorded(
    name: str, tmp_path: Path, *, data: dict[str, Any] | None = None, **fake: Any
) -> tuple[FakePynvml, Path]:
    """A FakePynvml for fixture ``name`` and that host's sysfs PCI tree under ``tmp_path``.

    ``data`` replaces the loaded fixture (tests that inject an error edit a copy).
    """
    fixture = data if data is not None else load_nvml_fixture(name)
    pci = write_pci_tree(tmp_path / "pci", fixture["sysfs_pci_devices"])
    return FakePynvml(fixture, **fake), pci

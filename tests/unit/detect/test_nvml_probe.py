"""probe_gpus against recorded hosts (FakePynvml), injected NVML failures and fake sysfs trees."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pynvml
import pytest

from appliance.detect.nvml_probe import (
    _cuda_version,
    architecture_name,
    probe_gpus,
    scan_pci,
    topology_link,
)
from tests.fakes.fake_pynvml import (
    FakePynvml,
    ForbiddenNvml,
    load_nvml_fixture,
    recorded,
    write_pci_tree,
)

ROOT = Path(__file__).resolve().parents[3]
MiB = 1024 * 1024

# name -> (count, model, total bytes, cc, architecture, active NVLinks, MIG, message)
RECORDED = {
    "h100x8": (
        8,
        "NVIDIA H100 80GB HBM3",
        81559 * MiB,
        (9, 0),
        "hopper",
        18,
        "disabled",
        "8 NVIDIA GPUs found: 8x NVIDIA H100 80GB HBM3 (driver 550.54.15, CUDA 12.4).",
    ),
    "h100x8-node-a": (
        8,
        "NVIDIA H100 80GB HBM3",
        81559 * MiB,
        (9, 0),
        "hopper",
        18,
        "disabled",
        "8 NVIDIA GPUs found: 8x NVIDIA H100 80GB HBM3 (driver 550.54.15, CUDA 12.4).",
    ),
    "h100x8-node-b": (
        8,
        "NVIDIA H100 80GB HBM3",
        81559 * MiB,
        (9, 0),
        "hopper",
        18,
        "disabled",
        "8 NVIDIA GPUs found: 8x NVIDIA H100 80GB HBM3 (driver 550.54.15, CUDA 12.4).",
    ),
    "a100-80gb": (
        1,
        "NVIDIA A100-SXM4-80GB",
        81920 * MiB,
        (8, 0),
        "ampere",
        0,
        "disabled",
        "1 NVIDIA GPU found: 1x NVIDIA A100-SXM4-80GB (driver 535.183.01, CUDA 12.2).",
    ),
    "a100-40gb": (
        1,
        "NVIDIA A100-PCIE-40GB",
        40960 * MiB,
        (8, 0),
        "ampere",
        0,
        "disabled",
        "1 NVIDIA GPU found: 1x NVIDIA A100-PCIE-40GB (driver 535.183.01, CUDA 12.2).",
    ),
    "rtx4090": (
        1,
        "NVIDIA GeForce RTX 4090",
        24564 * MiB,
        (8, 9),
        "ada",
        0,
        "unsupported",
        "1 NVIDIA GPU found: 1x NVIDIA GeForce RTX 4090 (driver 550.107.02, CUDA 12.4).",
    ),
    "rtx4090x2": (
        2,
        "NVIDIA GeForce RTX 4090",
        24564 * MiB,
        (8, 9),
        "ada",
        0,
        "unsupported",
        "2 NVIDIA GPUs found: 2x NVIDIA GeForce RTX 4090 (driver 550.107.02, CUDA 12.4).",
    ),
    "v100-old-driver": (
        1,
        "Tesla V100-SXM2-16GB",
        16160 * MiB,
        (7, 0),
        "volta",
        0,
        "unsupported",
        "1 NVIDIA GPU found: 1x Tesla V100-SXM2-16GB (driver 470.223.02, CUDA 11.4).",
    ),
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_host_is_reported(name: str, tmp_path: Path) -> None:
    count, model, total, cc, arch, nvlinks, mig, message = RECORDED[name]
    fake, pci = recorded(name, tmp_path)

    report = probe_gpus(fake, pci)

    assert report.status == "ok"
    assert report.usable
    assert report.message == message
    assert report.warnings == ()
    assert len(report.gpus) == count
    assert [g.index for g in report.gpus] == list(range(count))
    for gpu in report.gpus:
        assert gpu.name == model
        assert gpu.memory_total_bytes == total
        assert 0 < gpu.memory_free_bytes < total
        assert gpu.compute_capability == cc
        assert gpu.architecture == arch
        assert gpu.nvlink_active_links == nvlinks
        assert gpu.mig_mode == mig
        assert gpu.uuid.startswith("GPU-")
        assert gpu.pci_bus_id.startswith("00000000:")
    assert len({g.uuid for g in report.gpus}) == count
    assert fake.calls[0] == "nvmlInit"
    assert fake.calls[-1] == "nvmlShutdown"


def test_h100x8_links_are_all_nvlink(tmp_path: Path) -> None:
    report = probe_gpus(*recorded("h100x8", tmp_path))
    assert len(report.links) == 8
    for i, row in enumerate(report.links):
        assert row == tuple("X" if i == j else "NV" for j in range(8))


def test_two_h100_nodes_are_different_hosts(tmp_path: Path) -> None:
    a = probe_gpus(*recorded("h100x8-node-a", tmp_path / "a"))
    b = probe_gpus(*recorded("h100x8-node-b", tmp_path / "b"))
    assert not {g.uuid for g in a.gpus} & {g.uuid for g in b.gpus}


def test_rtx4090x2_without_nvlink_uses_pcie_topology(tmp_path: Path) -> None:
    report = probe_gpus(*recorded("rtx4090x2", tmp_path))
    assert report.links == (("X", "NODE"), ("NODE", "X"))


def test_single_gpu_links_matrix_is_just_self(tmp_path: Path) -> None:
    assert probe_gpus(*recorded("rtx4090", tmp_path)).links == (("X",),)


def test_memory_v2_is_preferred(tmp_path: Path) -> None:
    fake, pci = recorded("a100-80gb", tmp_path)
    report = probe_gpus(fake, pci)
    assert "nvmlDeviceGetMemoryInfo_v2" in fake.calls
    assert "nvmlDeviceGetMemoryInfo" not in fake.calls
    v2 = load_nvml_fixture("a100-80gb")["devices"][0]["nvmlDeviceGetMemoryInfo_v2"]
    assert report.gpus[0].memory_free_bytes == v2["free"]


def test_memory_falls_back_to_v1_on_function_not_found(tmp_path: Path) -> None:
    fake, pci = recorded("v100-old-driver", tmp_path)
    report = probe_gpus(fake, pci)
    assert fake.calls.index("nvmlDeviceGetMemoryInfo_v2") < fake.calls.index(
        "nvmlDeviceGetMemoryInfo"
    )
    assert report.gpus[0].memory_total_bytes == 16160 * MiB
    assert report.gpus[0].memory_free_bytes == (16160 - 307) * MiB
    assert report.gpus[0].mig_mode == "unsupported"
    assert report.warnings == ()  # both are expected on this driver, not problems


def test_memory_falls_back_to_v1_on_old_bindings(tmp_path: Path) -> None:
    fake, pci = recorded("rtx4090", tmp_path, memory_version_kwarg=False)
    report = probe_gpus(fake, pci)
    assert "nvmlDeviceGetMemoryInfo" in fake.calls
    assert report.gpus[0].memory_total_bytes == 24564 * MiB
    assert report.warnings == ()


def test_bytes_from_old_bindings_become_text(tmp_path: Path) -> None:
    fake, pci = recorded("a100-40gb", tmp_path, strings_as_bytes=True)
    report = probe_gpus(fake, pci)
    gpu = report.gpus[0]
    assert gpu.name == "NVIDIA A100-PCIE-40GB"
    assert isinstance(gpu.uuid, str) and gpu.uuid.startswith("GPU-")
    assert gpu.pci_bus_id == "00000000:3B:00.0"
    assert report.driver_version == "535.183.01"


# --------------------------------------------------------------------------- init failures

INIT_FAILURES = {
    "nvml-library-missing": (
        "library-not-found",
        ["libnvidia-ml.so.1", "1 NVIDIA GPU is on the PCI bus", "install the NVIDIA driver"],
    ),
    "nvml-mismatch": ("driver-library-mismatch", ["upgraded without a reboot", "reboot", "reload"]),
    "nvml-driver-not-loaded": ("driver-not-loaded", ["not loaded", "modprobe nvidia"]),
    "nvml-no-permission": ("no-permission", ["denied", "/dev/nvidia*", "root"]),
}


@pytest.mark.parametrize("name", sorted(INIT_FAILURES))
def test_init_failure_gives_status_and_actionable_message(name: str, tmp_path: Path) -> None:
    status, phrases = INIT_FAILURES[name]
    fake, pci = recorded(name, tmp_path)

    report = probe_gpus(fake, pci)

    assert report.status == status
    assert not report.usable
    assert report.gpus == () and report.links == ()
    for phrase in phrases:
        assert phrase in report.message
    assert report.message.endswith(".")
    # Init never succeeded, so there is nothing to shut down.
    assert fake.calls == ["nvmlInit"]


def test_library_missing_without_pci_evidence_says_so(tmp_path: Path) -> None:
    fake = FakePynvml(load_nvml_fixture("nvml-library-missing"))
    report = probe_gpus(fake, tmp_path / "no-sysfs")
    assert report.status == "library-not-found"
    assert "PCI bus" not in report.message
    assert "CPU only" in report.message


def _with(name: str, edit: Any) -> dict[str, Any]:
    data = copy.deepcopy(load_nvml_fixture(name))
    edit(data)
    return data


def test_unknown_init_error_is_error_status(tmp_path: Path) -> None:
    data = _with("a100-40gb", lambda d: d.update(nvmlInit={"raise": "Unknown"}))
    report = probe_gpus(*recorded("", tmp_path, data=data))
    assert report.status == "error"
    assert "nvmlInit" in report.message and "nvidia-smi" in report.message


def test_gpu_lost_at_init(tmp_path: Path) -> None:
    data = _with("a100-40gb", lambda d: d.update(nvmlInit={"raise": "GpuIsLost"}))
    report = probe_gpus(*recorded("", tmp_path, data=data))
    assert report.status == "gpu-lost"
    assert "dmesg" in report.message and "reboot" in report.message


# --------------------------------------------------------------------------- later failures


def test_shutdown_runs_when_a_later_nvml_call_fails(tmp_path: Path) -> None:
    data = _with("h100x8", lambda d: d.update(nvmlDeviceGetCount={"raise": "Unknown"}))
    fake, pci = recorded("", tmp_path, data=data)

    report = probe_gpus(fake, pci)

    assert report.status == "error"
    assert "nvmlDeviceGetCount" in report.message
    assert fake.calls[-1] == "nvmlShutdown"
    assert fake.shutdown_count == fake.init_count == 1


def test_shutdown_runs_when_the_probe_hits_a_non_nvml_exception(tmp_path: Path) -> None:
    fake, pci = recorded("rtx4090", tmp_path)

    def broken(handle: Any) -> str:
        raise RuntimeError("binding bug")

    fake.nvmlDeviceGetName = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        probe_gpus(fake, pci)
    assert fake.calls[-1] == "nvmlShutdown"


def test_lost_gpu_is_reported_and_the_others_kept(tmp_path: Path) -> None:
    def lose_gpu_3(d: dict[str, Any]) -> None:
        d["devices"][3]["nvmlDeviceGetHandleByIndex"] = {"raise": "GpuIsLost"}

    fake, pci = recorded("", tmp_path, data=_with("h100x8", lose_gpu_3))
    report = probe_gpus(fake, pci)

    assert report.status == "gpu-lost"
    assert not report.usable
    assert [g.index for g in report.gpus] == [0, 1, 2, 4, 5, 6, 7]
    assert len(report.links) == 7
    assert "GPU 3 fell off the bus" in report.message
    assert "7 other GPUs" in report.message
    assert "reboot" in report.message
    assert fake.calls[-1] == "nvmlShutdown"


def test_gpu_lost_during_an_optional_query_is_not_swallowed(tmp_path: Path) -> None:
    def lose(d: dict[str, Any]) -> None:
        d["devices"][1]["nvmlDeviceGetArchitecture"] = {"raise": "GpuIsLost"}

    report = probe_gpus(*recorded("", tmp_path, data=_with("rtx4090x2", lose)))
    assert report.status == "gpu-lost"
    assert [g.index for g in report.gpus] == [0]


def test_optional_query_failures_keep_the_device(tmp_path: Path) -> None:
    def break_queries(d: dict[str, Any]) -> None:
        dev = d["devices"][0]
        dev["nvmlDeviceGetArchitecture"] = {"raise": "NotSupported"}
        dev["nvmlDeviceGetUUID"] = {"raise": "Unknown"}
        dev["nvmlDeviceGetCudaComputeCapability"] = {"raise": "FunctionNotFound"}
        dev["nvmlDeviceGetMigMode"] = {"raise": "Unknown"}
        d["nvmlSystemGetCudaDriverVersion"] = {"raise": "FunctionNotFound"}

    report = probe_gpus(*recorded("", tmp_path, data=_with("a100-40gb", break_queries)))

    assert report.status == "ok"
    gpu = report.gpus[0]
    assert gpu.name == "NVIDIA A100-PCIE-40GB"
    assert gpu.memory_total_bytes == 40960 * MiB
    assert gpu.architecture == "unknown"
    assert gpu.uuid == ""
    assert gpu.compute_capability == (0, 0)
    assert gpu.mig_mode == "unknown"  # the query failed; not the same as a card without MIG
    assert report.cuda_driver_version is None
    assert report.message.endswith("(driver 535.183.01).")
    joined = "\n".join(report.warnings)
    for what in ("GPU 0 architecture", "GPU 0 UUID", "GPU 0 compute capability", "GPU 0 MIG"):
        assert what in joined
    assert "CUDA driver version" in joined
    assert len(report.warnings) == 5


def test_mig_enabled_is_reported(tmp_path: Path) -> None:
    def enable(d: dict[str, Any]) -> None:
        d["devices"][0]["nvmlDeviceGetMigMode"] = [1, 1]

    report = probe_gpus(*recorded("", tmp_path, data=_with("a100-80gb", enable)))
    assert report.gpus[0].mig_mode == "enabled"


def test_nvlink_counts_only_active_links_and_stops_at_the_end(tmp_path: Path) -> None:
    def partial(d: dict[str, Any]) -> None:
        d["devices"][0]["nvmlDeviceGetNvLinkState"] = [1, 0, 1, 0]

    fake, pci = recorded("", tmp_path, data=_with("a100-40gb", partial))
    report = probe_gpus(fake, pci)
    assert report.gpus[0].nvlink_active_links == 2
    # Links 0-3 answer, link 4 raises InvalidArgument and ends the loop.
    assert [c for c in fake.calls if c.startswith("nvmlDeviceGetNvLinkState")] == [
        f"nvmlDeviceGetNvLinkState({i})" for i in range(5)
    ]
    assert report.warnings == ()


def test_nvlink_not_supported_stops_at_first_link(tmp_path: Path) -> None:
    fake, pci = recorded("rtx4090", tmp_path)
    probe_gpus(fake, pci)
    assert [c for c in fake.calls if c.startswith("nvmlDeviceGetNvLinkState")] == [
        "nvmlDeviceGetNvLinkState(0)"
    ]


def test_link_falls_back_to_topology_then_question_mark(tmp_path: Path) -> None:
    def degrade(d: dict[str, Any]) -> None:
        p2p, topo = d["nvmlDeviceGetP2PStatus_NVLINK"], d["nvmlDeviceGetTopologyCommonAncestor"]
        p2p[0][1] = {"raise": "NotSupported"}  # no answer: use the PCIe level
        topo[0][1] = pynvml.NVML_TOPOLOGY_HOSTBRIDGE
        p2p[0][2] = pynvml.NVML_P2P_STATUS_GPU_NOT_SUPPORTED
        topo[0][2] = {"raise": "Unknown"}  # no answer at all: unknown
        topo[0][3] = pynvml.NVML_TOPOLOGY_SYSTEM
        p2p[0][3] = pynvml.NVML_P2P_STATUS_NOT_SUPPORTED

    report = probe_gpus(*recorded("", tmp_path, data=_with("h100x8", degrade)))
    assert report.links[0][:5] == ("X", "PHB", "?", "SYS", "NV")
    assert report.links[1][0] == "PHB"  # symmetric
    assert report.links[2][0] == "?"
    assert any("GPU 0-2 topology" in w for w in report.warnings)


def test_nvml_answering_with_zero_devices(tmp_path: Path) -> None:
    data = _with("rtx4090", lambda d: d.update(devices=[]))
    report = probe_gpus(*recorded("", tmp_path, data=data))
    assert report.status == "ok"
    assert report.gpus == () and report.links == ()
    assert not report.usable
    assert "NVML works" in report.message and "reports no GPU" in report.message
    assert "driver 550.107.02" in report.message


def test_mixed_models_are_listed_per_model(tmp_path: Path) -> None:
    def mix(d: dict[str, Any]) -> None:
        d["devices"][1]["nvmlDeviceGetName"] = "NVIDIA RTX A6000"

    report = probe_gpus(*recorded("", tmp_path, data=_with("rtx4090x2", mix)))
    assert report.message == (
        "2 NVIDIA GPUs found: 1x NVIDIA GeForce RTX 4090, 1x NVIDIA RTX A6000 "
        "(driver 550.107.02, CUDA 12.4)."
    )


# --------------------------------------------------------------------------- PCI pre-check

CPU_SERVER = [
    ("0000:00:00.0", "0x8086", "0x060000"),
    ("0000:00:17.0", "0x8086", "0x010601"),
    ("0000:02:00.0", "0x1a03", "0x030000"),  # ASPEED BMC VGA: display class, other vendor
    ("0000:18:00.0", "0x8086", "0x020000"),
    ("0000:3b:00.0", "0x10de", "0x068000"),  # NVIDIA, but an NVSwitch bridge, not a GPU
    ("0000:3c:00.1", "0x10de", "0x040300"),  # NVIDIA HD audio function, not a GPU
]


def test_no_nvidia_device_skips_nvml(tmp_path: Path) -> None:
    pci = write_pci_tree(tmp_path / "pci", CPU_SERVER)
    report = probe_gpus(ForbiddenNvml(), pci)
    assert report.status == "no-nvidia-device"
    assert report.message == (
        f"No NVIDIA GPU on the PCI bus (scanned 6 devices in {pci}); NVML was not needed."
    )
    assert report.gpus == () and not report.usable


def test_no_nvidia_device_does_not_import_pynvml(tmp_path: Path) -> None:
    pci = write_pci_tree(tmp_path / "pci", CPU_SERVER)
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from appliance.detect.nvml_probe import probe_gpus\n"
        f"r = probe_gpus(pci_devices_dir=Path({str(pci)!r}))\n"
        "print(json.dumps([r.status, 'pynvml' in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == ["no-nvidia-device", False]


@pytest.mark.parametrize(
    "pci_class", ["0x030000", "0x030200", "0x038000"], ids=["vga", "3d", "other-display"]
)
def test_nvidia_display_device_uses_nvml(pci_class: str, tmp_path: Path) -> None:
    pci = write_pci_tree(tmp_path / "pci", [*CPU_SERVER, ("0000:41:00.0", "0x10de", pci_class)])
    fake = FakePynvml(load_nvml_fixture("a100-40gb"))
    report = probe_gpus(fake, pci)
    assert fake.calls[0] == "nvmlInit"
    assert report.status == "ok"


def test_missing_sysfs_uses_nvml(tmp_path: Path) -> None:
    fake = FakePynvml(load_nvml_fixture("rtx4090"))
    report = probe_gpus(fake, tmp_path / "does-not-exist")
    assert "nvmlInit" in fake.calls
    assert report.status == "ok"


def test_empty_sysfs_uses_nvml(tmp_path: Path) -> None:
    (tmp_path / "pci").mkdir()
    fake = FakePynvml(load_nvml_fixture("rtx4090"))
    assert probe_gpus(fake, tmp_path / "pci").status == "ok"
    assert "nvmlInit" in fake.calls


def test_unreadable_pci_entry_makes_scan_inconclusive(tmp_path: Path) -> None:
    pci = write_pci_tree(tmp_path / "pci", CPU_SERVER)
    (pci / "0000:18:00.0" / "vendor").unlink()
    scan = scan_pci(pci)
    assert not scan.conclusive
    fake = FakePynvml(load_nvml_fixture("rtx4090"))
    assert probe_gpus(fake, pci).status == "ok"
    assert "nvmlInit" in fake.calls


def test_scan_pci_lists_only_nvidia_display_devices(tmp_path: Path) -> None:
    fixture = load_nvml_fixture("h100x8")
    scan = scan_pci(write_pci_tree(tmp_path / "pci", fixture["sysfs_pci_devices"]))
    assert scan.conclusive
    assert scan.devices_scanned == len(fixture["sysfs_pci_devices"])
    # 8 GPUs; the 4 NVSwitches (class 0x0680) are NVIDIA but not GPUs.
    assert scan.nvidia_display_devices == (
        "0000:1b:00.0",
        "0000:43:00.0",
        "0000:52:00.0",
        "0000:61:00.0",
        "0000:9d:00.0",
        "0000:c3:00.0",
        "0000:d1:00.0",
        "0000:df:00.0",
    )


# --------------------------------------------------------------------------- mappings


@pytest.mark.parametrize(
    ("constant", "name"),
    [
        ("KEPLER", "kepler"),
        ("MAXWELL", "maxwell"),
        ("PASCAL", "pascal"),
        ("VOLTA", "volta"),
        ("TURING", "turing"),
        ("AMPERE", "ampere"),
        ("ADA", "ada"),
        ("HOPPER", "hopper"),
        ("BLACKWELL", "blackwell"),
        ("UNKNOWN", "unknown"),
    ],
)
def test_architecture_names(constant: str, name: str) -> None:
    assert architecture_name(pynvml, getattr(pynvml, f"NVML_DEVICE_ARCH_{constant}")) == name


def test_unlisted_architecture_is_unknown() -> None:
    assert architecture_name(pynvml, 12345) == "unknown"


@pytest.mark.parametrize(
    ("constant", "link"),
    [
        ("INTERNAL", "PIX"),
        ("SINGLE", "PIX"),
        ("MULTIPLE", "PXB"),
        ("HOSTBRIDGE", "PHB"),
        ("NODE", "NODE"),
        ("SYSTEM", "SYS"),
    ],
)
def test_topology_levels_use_nvidia_smi_vocabulary(constant: str, link: str) -> None:
    assert topology_link(pynvml, getattr(pynvml, f"NVML_TOPOLOGY_{constant}")) == link
    assert topology_link(pynvml, 99) == "?"


@pytest.mark.parametrize(
    ("value", "text"), [(12040, "12.4"), (11080, "11.8"), (12080, "12.8"), (13000, "13.0")]
)
def test_cuda_driver_version_format(value: int, text: str) -> None:
    assert _cuda_version(value) == text


def test_fake_exposes_pynvml_exception_classes_and_no_real_functions() -> None:
    fake = FakePynvml(load_nvml_fixture("rtx4090"))
    assert fake.NVMLError_NotSupported is pynvml.NVMLError_NotSupported
    assert fake.NVML_P2P_STATUS_OK == pynvml.NVML_P2P_STATUS_OK
    with pytest.raises(AttributeError):
        _ = fake.nvmlDeviceGetPowerUsage


def test_compute_processes_are_counted_and_unknown_where_nvml_cannot_say(tmp_path: Path) -> None:
    fake, pci = recorded("rtx4090-busy", tmp_path / "busy")
    assert probe_gpus(fake, pci).gpus[0].compute_processes == 1
    fake, pci = recorded("rtx4090", tmp_path / "old")  # recorded before the query: NotSupported
    report = probe_gpus(fake, pci)
    assert report.gpus[0].compute_processes is None
    assert not any("compute processes" in w for w in report.warnings)
    data = load_nvml_fixture("rtx4090")
    data["devices"][0]["nvmlDeviceGetComputeRunningProcesses"] = {"raise": "NoPermission"}
    fake, pci = recorded("rtx4090", tmp_path / "denied", data=data)
    report = probe_gpus(fake, pci)
    assert report.gpus[0].compute_processes is None
    assert any(w.startswith("GPU 0 compute processes:") for w in report.warnings)

"""detect_host with fixed probes and recorded hosts, import discipline, and a real-host smoke test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from appliance import __version__
from appliance.detect.facts import FACTS_SCHEMA_VERSION, INSTALL_PATHS, DiskFacts
from appliance.detect.host import detect_host, parse_os_release
from tests.fakes import GiB, fixed_probe
from tests.fakes.fake_pynvml import ForbiddenNvml, recorded, write_pci_tree

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)


def test_workstation_with_rtx4090(fake_root: Path, tmp_path: Path) -> None:
    nvml, pci = recorded("rtx4090", tmp_path)

    facts = detect_host(
        nvml=nvml, pci_devices_dir=pci, proc_root=fake_root, now=NOW, probe=fixed_probe()
    )

    assert facts.hostname == "ws-test"
    assert facts.collected_at == "2025-06-02T09:30:00+00:00"
    assert facts.schema_version == FACTS_SCHEMA_VERSION
    assert facts.tool_version == __version__
    assert facts.os.system == "Linux"
    assert facts.os.distribution == "Ubuntu 24.04.1 LTS"
    assert facts.os.kernel == "6.8.0-45-generic"
    assert facts.os.python == "3.11.9"
    assert facts.cpu.model == "AMD Ryzen 9 5950X 16-Core Processor"
    assert facts.cpu.architecture == "x86_64"
    assert (facts.cpu.physical_cores, facts.cpu.logical_cores) == (16, 32)
    assert "avx2" in facts.cpu.flags and "avx512f" not in facts.cpu.flags
    assert (facts.memory.total_bytes, facts.memory.available_bytes) == (128 * GiB, 120 * GiB)
    assert facts.disks == (
        DiskFacts("/opt/appliance", "/opt", 2000 * GiB, 1500 * GiB),
        DiskFacts("/var/lib/appliance", "/var/lib", 2000 * GiB, 1500 * GiB),
        DiskFacts("/var/log/appliance", "/var/log", 2000 * GiB, 1500 * GiB),
    )
    assert facts.gpu.status == "ok"
    assert [g.name for g in facts.gpu.gpus] == ["NVIDIA GeForce RTX 4090"]


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("nvml-library-missing", "library-not-found"),
        ("nvml-mismatch", "driver-library-mismatch"),
        ("nvml-driver-not-loaded", "driver-not-loaded"),
        ("nvml-no-permission", "no-permission"),
    ],
)
def test_gpu_failure_keeps_the_rest_of_the_host(
    name: str, status: str, fake_root: Path, tmp_path: Path
) -> None:
    nvml, pci = recorded(name, tmp_path)
    facts = detect_host(
        nvml=nvml, pci_devices_dir=pci, proc_root=fake_root, now=NOW, probe=fixed_probe()
    )
    assert facts.gpu.status == status
    assert facts.gpu.message
    assert facts.cpu.logical_cores == 32 and facts.cpu.flags
    assert facts.memory.total_bytes == 128 * GiB
    assert len(facts.disks) == len(INSTALL_PATHS)
    assert facts.os.distribution == "Ubuntu 24.04.1 LTS"


def test_cpu_only_host_never_touches_nvml(fake_root: Path, tmp_path: Path) -> None:
    pci = write_pci_tree(tmp_path / "pci", [("0000:00:00.0", "0x8086", "0x060000")])
    facts = detect_host(
        nvml=ForbiddenNvml(), pci_devices_dir=pci, proc_root=fake_root, probe=fixed_probe()
    )
    assert facts.gpu.status == "no-nvidia-device"
    assert "scanned 1 device in" in facts.gpu.message


def test_physical_cores_unknown_falls_back_to_logical(fake_root: Path, tmp_path: Path) -> None:
    facts = detect_host(
        nvml=ForbiddenNvml(),
        pci_devices_dir=write_pci_tree(tmp_path / "pci", [("0000:00:00.0", "0x8086", "0x0600")]),
        proc_root=fake_root,
        probe=fixed_probe(logical=8, physical=None),
    )
    assert (facts.cpu.physical_cores, facts.cpu.logical_cores) == (8, 8)


def test_disks_use_nearest_existing_ancestor_and_skip_unreadable(
    fake_root: Path, tmp_path: Path
) -> None:
    probe = fixed_probe(
        existing=frozenset({"/", "/srv", "/srv/data"}), failing_disks=frozenset({"/srv"})
    )
    facts = detect_host(
        nvml=ForbiddenNvml(),
        pci_devices_dir=write_pci_tree(tmp_path / "pci", [("0000:00:00.0", "0x8086", "0x0600")]),
        proc_root=fake_root,
        install_paths=("/opt/appliance/models", "/srv/data/appliance", "/srv/other"),
        probe=probe,
    )
    assert [(d.path, d.measured_at) for d in facts.disks] == [
        ("/opt/appliance/models", "/"),
        ("/srv/data/appliance", "/srv/data"),
        # /srv/other is measured at /srv, which cannot be read: left out, not 0 bytes free
    ]


def test_missing_proc_and_etc_give_unknown(tmp_path: Path) -> None:
    facts = detect_host(
        nvml=ForbiddenNvml(),
        pci_devices_dir=write_pci_tree(tmp_path / "pci", [("0000:00:00.0", "0x8086", "0x0600")]),
        proc_root=tmp_path / "empty-root",
        probe=fixed_probe(),
    )
    assert facts.cpu.model == "unknown" and facts.cpu.flags == ()
    assert facts.os.distribution == "unknown"


def test_os_release_fallback_to_usr_lib(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text('PRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"\n')
    facts = detect_host(
        nvml=ForbiddenNvml(),
        pci_devices_dir=write_pci_tree(tmp_path / "pci", [("0000:00:00.0", "0x8086", "0x0600")]),
        proc_root=root,
        probe=fixed_probe(),
    )
    assert facts.os.distribution == "Rocky Linux 9.4 (Blue Onyx)"


def test_collected_at_is_utc(fake_root: Path, tmp_path: Path) -> None:
    cest = datetime(2025, 6, 2, 11, 30, tzinfo=timezone(timedelta(hours=2)))
    facts = detect_host(
        nvml=ForbiddenNvml(),
        pci_devices_dir=write_pci_tree(tmp_path / "pci", [("0000:00:00.0", "0x8086", "0x0600")]),
        proc_root=fake_root,
        now=cest,
        probe=fixed_probe(),
    )
    assert facts.collected_at == "2025-06-02T09:30:00+00:00"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ('PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\n', "Ubuntu 22.04.4 LTS"),
        ("PRETTY_NAME='Debian GNU/Linux 12 (bookworm)'\n", "Debian GNU/Linux 12 (bookworm)"),
        ("NAME=Alpine\nVERSION=3.20\n", "Alpine 3.20"),
        ('# comment\nPRETTY_NAME="Say \\"hi\\""\n', 'Say "hi"'),
        ("", "unknown"),
    ],
)
def test_parse_os_release(text: str, name: str) -> None:
    assert parse_os_release(text) == name


def _run(code: str) -> list[object]:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    result: list[object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_detect_host_does_not_import_pydantic_rich_or_argparse() -> None:
    loaded = _run(
        "import json, sys\n"
        "import appliance.detect.host\n"
        "appliance.detect.host.detect_host()\n"
        "from appliance.detect.facts import dump_facts_json\n"
        "print(json.dumps(sorted(m for m in ('pydantic', 'rich', 'argparse', 'textual')"
        " if m in sys.modules)))\n"
    )
    assert loaded == []


def test_pydantic_check_can_fail() -> None:
    # Guards the guard: reading facts back does import pydantic, and the check sees it.
    loaded = _run(
        "import json, sys\n"
        "from appliance.detect.facts_file import facts_json_schema\n"
        "facts_json_schema()\n"
        "print(json.dumps(['pydantic'] if 'pydantic' in sys.modules else []))\n"
    )
    assert loaded == ["pydantic"]


def test_real_host_smoke() -> None:
    """detect_host() on the machine running the tests (no GPU expected here)."""
    facts = detect_host()

    if not Path("/dev/nvidiactl").exists():
        assert facts.gpu.status in {
            "no-nvidia-device",
            "library-not-found",
            "driver-not-loaded",
            "driver-library-mismatch",
            "no-permission",
            "error",
        }
        assert facts.gpu.gpus == ()
    assert facts.gpu.message.endswith(".")
    assert facts.hostname
    assert facts.cpu.logical_cores >= 1
    assert 1 <= facts.cpu.physical_cores <= facts.cpu.logical_cores
    assert facts.cpu.architecture
    assert facts.memory.total_bytes > 0
    assert 0 < facts.memory.available_bytes <= facts.memory.total_bytes
    assert len(facts.disks) == len(INSTALL_PATHS)
    for disk in facts.disks:
        assert os.path.exists(disk.measured_at)
        assert disk.path.startswith(disk.measured_at)
        assert 0 <= disk.free_bytes <= disk.total_bytes
    assert facts.os.system == "Linux"


def test_dev_shm_is_measured_where_it_exists_and_unknown_where_not(
    fake_root: Path, tmp_path: Path
) -> None:
    pci = write_pci_tree(tmp_path / "pci", [("0000:00:00.0", "0x8086", "0x0600")])
    with_shm = fixed_probe(existing=frozenset({"/", "/dev/shm"}), disk=(64 * 2**20, 64 * 2**20))
    facts = detect_host(nvml=ForbiddenNvml(), pci_devices_dir=pci, proc_root=fake_root,
                        probe=with_shm)  # fmt: skip
    assert facts.shm_total_bytes == 64 * 2**20
    for probe in (
        fixed_probe(existing=frozenset({"/"})),  # no /dev/shm
        fixed_probe(existing=frozenset({"/", "/dev/shm"}), failing_disks=frozenset({"/dev/shm"})),
    ):
        facts = detect_host(nvml=ForbiddenNvml(), pci_devices_dir=pci, proc_root=fake_root,
                            probe=probe)  # fmt: skip
        assert facts.shm_total_bytes is None

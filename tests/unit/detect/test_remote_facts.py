"""The remote facts script and its parser, on output recorded from real lab hosts.

``tests/fixtures/remote_facts/lab-*.txt`` are what ``facts_script()`` printed
over SSH on an ``appliance lab`` host (Debian 12): fresh, with the releases
directory made, and with a ``/dev/nvidiactl`` placed there (no GPU behind it:
the shipped probe ran under the host's python3 and scanned its PCI bus). The
GPU host is synthesised: its ``@@gpu`` section is what the probe prints for a
recorded H100 host (``tests/fixtures/nvml``), so it goes through
``probe_gpus`` and the strict facts validation like a real one would.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.detect.facts import GpuReport
from appliance.detect.nvml_probe import probe_gpus
from appliance.detect.remote import (
    NO_NVIDIA_DEVICE,
    SECTIONS,
    facts_script,
    gpu_probe_program,
    parse_facts_output,
)
from appliance.errors import DeploymentError, RemoteFactsError
from tests.fakes.fake_pynvml import recorded

ROOT = Path(__file__).resolve().parents[3]
RECORDED = ROOT / "tests/fixtures/remote_facts"
RELEASES = "/opt/appliance/releases"


def recording(name: str) -> str:
    return (RECORDED / f"{name}.txt").read_text("utf-8")


def with_section(text: str, name: str, lines: list[str]) -> str:
    """``text`` with section ``name``'s lines replaced."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line.startswith("@@"):
            skipping = line == f"@@{name}"
            out.append(line)
            if skipping:
                out.extend(lines)
            continue
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def test_a_fresh_lab_host_gives_the_facts_deploy_always_read() -> None:
    facts = parse_facts_output(recording("lab-debian-fresh"), "sp13-1")
    assert facts.hostname == "sp13-1" and facts.collected_at == ""
    assert (facts.os.system, facts.os.distribution) == ("Linux", "Debian GNU/Linux 12 (bookworm)")
    assert facts.os.kernel == "6.18.44-fc-v1272" and facts.os.python == "3.11.2"
    assert (facts.cpu.model, facts.cpu.architecture) == ("AMD EPYC", "x86_64")
    assert (facts.cpu.physical_cores, facts.cpu.logical_cores) == (2, 2)
    assert "avx2" in facts.cpu.flags and "sse3" in facts.cpu.flags  # through parse_cpuinfo
    assert facts.memory.total_bytes == 24683784 * 1024
    assert facts.memory.available_bytes == 24012268 * 1024
    [disk] = facts.disks
    assert (disk.path, disk.measured_at) == (RELEASES, "/opt")
    assert (disk.total_bytes, disk.free_bytes) == (270553174016, 72827871232)
    assert facts.gpu == NO_NVIDIA_DEVICE
    assert facts.gpu == GpuReport(
        status="no-nvidia-device",
        message="no NVIDIA device node on the host (/dev/nvidiactl missing)",
    )


def test_the_releases_directory_is_measured_once_it_exists() -> None:
    [disk] = parse_facts_output(recording("lab-debian-releases"), "sp13-1").disks
    assert (disk.path, disk.measured_at) == (RELEASES, RELEASES)


def test_a_device_node_runs_the_shipped_probe_on_the_host() -> None:
    # Recorded: /dev/nvidiactl present, no NVIDIA device on the PCI bus, the host's python3
    # ran facts.py + nvml_probe.py as shipped in the script.
    gpu = parse_facts_output(recording("lab-debian-nvidiactl-no-gpu"), "sp13-1").gpu
    assert gpu.status == "no-nvidia-device"
    assert gpu.message.startswith("No NVIDIA GPU on the PCI bus (scanned 6 devices")


def test_a_gpu_host_carries_the_probe_report_through_the_strict_parser(tmp_path: Path) -> None:
    report = probe_gpus(*recorded("h100x8", tmp_path))
    printed = json.dumps(dataclasses.asdict(report), sort_keys=True)  # as the program prints it
    text = with_section(recording("lab-debian-fresh"), "nvidia", ["/dev/nvidiactl"])
    facts = parse_facts_output(with_section(text, "gpu", [printed]), "gpu-1")
    assert facts.gpu == report
    assert facts.gpu.usable and len(facts.gpu.gpus) == 8
    assert facts.gpu.gpus[0].compute_capability == (9, 0)  # a JSON array back to a tuple


def test_a_device_node_without_a_report_is_an_error_report_not_a_failure() -> None:
    text = with_section(recording("lab-debian-fresh"), "nvidia", ["/dev/nvidiactl"])
    gpu = parse_facts_output(text, "h").gpu
    assert gpu.status == "error" and "printed nothing" in gpu.message


def test_the_script_measures_the_path_asked_about_and_ends_with_its_marker() -> None:
    script = facts_script(RELEASES)
    assert f"echo '{RELEASES}'" in script and script.rstrip().endswith('echo "@@end"')
    for name in SECTIONS:
        assert f'echo "@@{name}"' in script
    with pytest.raises(ValueError):
        facts_script("relative/path")


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
def test_the_script_runs_here_and_parses(tmp_path: Path) -> None:
    result = subprocess.run(["sh", "-s"], input=facts_script(str(tmp_path / "x")), text=True,
                            capture_output=True, check=True, timeout=60)  # fmt: skip
    facts = parse_facts_output(result.stdout, "local")
    assert facts.cpu.logical_cores >= 1 and facts.memory.total_bytes > 0
    assert facts.disks and facts.disks[0].measured_at == str(tmp_path)
    if Path("/dev/shm").is_dir():  # the @@shm section measured this machine's /dev/shm
        assert facts.shm_total_bytes is not None and facts.shm_total_bytes > 0


@pytest.mark.skipif(shutil.which("python3") is None, reason="needs python3")
def test_the_shipped_probe_runs_under_a_bare_python3() -> None:
    # No appliance and no pynvml on that interpreter's path: the program brings both. A PCI
    # directory that cannot be read makes the probe ask NVML (the shipped pynvml).
    program = gpu_probe_program().replace(
        "probe_gpus()", "probe_gpus(pci_devices_dir=__import__('pathlib').Path('/nonexistent'))"
    )
    result = subprocess.run(["python3", "-I", "-"], input=program, text=True,
                            capture_output=True, check=True, timeout=60)  # fmt: skip
    text = with_section(recording("lab-debian-fresh"), "nvidia", ["/dev/nvidiactl"])
    gpu = parse_facts_output(with_section(text, "gpu", [result.stdout.strip()]), "h").gpu
    assert "not importable" not in gpu.message and "probe failed" not in gpu.message
    assert gpu.status in ("library-not-found", "driver-not-loaded", "ok", "no-permission")


# --- output that cannot be read: a RemoteFactsError (a DeploymentError), never a traceback --


def test_truncated_output_is_refused() -> None:
    text = recording("lab-debian-fresh")
    cut = text[: text.index("@@cpuinfo") + 200]
    with pytest.raises(RemoteFactsError, match=r"sp13-1: .* ends before its last section"):
        parse_facts_output(cut, "sp13-1")
    with pytest.raises(RemoteFactsError):
        parse_facts_output("", "sp13-1")


def test_a_missing_section_is_named() -> None:
    text = recording("lab-debian-fresh").replace("@@meminfo\n", "")
    with pytest.raises(RemoteFactsError, match="no section @@meminfo"):
        parse_facts_output(text, "h")


@pytest.mark.parametrize(
    ("section", "lines", "where"),
    [
        ("nproc", ["two"], "@@nproc"),
        ("nproc", ["-1"], "@@nproc"),
        ("cores", ["2.5"], "@@cores"),
        ("meminfo", ["MemTotal:       lots kB", "MemAvailable: 1 kB"], "@@meminfo"),
    ],
)
def test_garbage_numbers_are_refused(section: str, lines: list[str], where: str) -> None:
    text = with_section(recording("lab-debian-fresh"), section, lines)
    with pytest.raises(RemoteFactsError, match=where) as caught:
        parse_facts_output(text, "h")
    assert isinstance(caught.value, DeploymentError)


@pytest.mark.parametrize(
    ("printed", "match"),
    [
        ('{"status": "ok", "message": "x", "gpus": [{"index": "0"}]}', "gpu.gpus"),
        ('{"status": "fine", "message": "x"}', "gpu.status"),
        ("Traceback (most recent call last):", "not JSON"),
        ('{"status": "ok", "mess', "not JSON"),
    ],
)
def test_a_gpu_report_that_does_not_validate_is_refused(printed: str, match: str) -> None:
    text = with_section(recording("lab-debian-fresh"), "nvidia", ["/dev/nvidiactl"])
    with pytest.raises(RemoteFactsError, match=match):
        parse_facts_output(with_section(text, "gpu", [printed]), "h")


def test_empty_optional_sections_degrade_as_before() -> None:
    text = recording("lab-debian-fresh")
    for name in ("cores", "python", "osrelease", "df", "uname"):
        text = with_section(text, name, [])
    facts = parse_facts_output(text, "h")
    assert facts.cpu.physical_cores == facts.cpu.logical_cores == 2
    assert (facts.os.python, facts.os.distribution) == ("unknown", "unknown")
    assert (facts.os.system, facts.os.kernel, facts.cpu.architecture) == (
        "Linux",
        "unknown",
        "unknown",
    )
    assert facts.disks == ()


def with_shm(text: str, lines: list[str]) -> str:
    """``text`` with an ``@@shm`` section (as the script prints it now) before ``@@gpu``."""
    return text.replace("@@gpu\n", "\n".join(["@@shm", *lines, "@@gpu"]) + "\n", 1)


def test_output_recorded_before_the_shm_section_still_parses_with_shm_unknown() -> None:
    assert "@@shm" not in recording("lab-debian-fresh")
    assert parse_facts_output(recording("lab-debian-fresh"), "sp13-1").shm_total_bytes is None


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["tmpfs 67108864 0 67108864 0% /dev/shm"], 64 * 2**20),  # Docker's default
        (["tmpfs          8413904896     0 8413904896   0% /dev/shm"], 8413904896),
        ([], None),  # no /dev/shm: df printed nothing
        (["df: /dev/shm: No such file or directory"], None),
        (["tmpfs lots 0 0 0% /dev/shm"], None),
        (["tmpfs " + "9" * 40 + " 0 0 0% /dev/shm"], None),  # bounded: not a plausible size
        (["tmpfs 1 0 1 0% /dev/shm", "tmpfs 2 0 2 0% /dev/shm"], None),
    ],
)
def test_the_shm_section_is_read_from_dfs_line_or_left_unknown(
    lines: list[str], expected: int | None
) -> None:
    text = with_shm(recording("lab-debian-fresh"), lines)
    assert parse_facts_output(text, "sp13-1").shm_total_bytes == expected

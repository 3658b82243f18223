"""``appliance.model.info`` stays cheap to import: gguf (~150 ms) and numpy load only
when a GGUF file is read, never for the import or for a Hugging Face directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "models" / "mistral-7b-instruct-v0.3"
HEAVY = ("gguf", "numpy")


def loaded_after(code: str) -> list[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return [m for m in json.loads(out.stdout.splitlines()[-1]) if m.split(".")[0] in HEAVY]


def test_import_loads_neither_gguf_nor_numpy() -> None:
    assert loaded_after("import appliance.model.info") == []


def test_reading_a_hf_directory_loads_neither() -> None:
    code = (
        "from pathlib import Path\n"
        "from appliance.model.info import load_model_info\n"
        f"load_model_info(Path({str(FIXTURE)!r}))\n"
    )
    assert loaded_after(code) == []


def test_the_check_can_fail() -> None:
    # Guard against a probe that never sees anything.
    assert "gguf" in loaded_after("import gguf")

"""The command line as scripts see it: exit codes, stdout/stderr, stable JSON, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli.main import main
from appliance.detect.facts_file import load_facts
from appliance.exitcodes import ExitCode

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests/golden/plan"
FACTS = "tests/fixtures/facts"
MODELS = "tests/fixtures/models"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point in a fresh interpreter, as an operator's script would call it."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, cwd=ROOT,
        timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def assert_clean_failure(
    result: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""  # nothing half-printed on failure
    for fragment in fragments:
        assert fragment in result.stderr


# --- golden JSON -----------------------------------------------------------------

CASES = {
    "a100-80gb_mixtral-8x22b": (
        f"{FACTS}/a100-80gb.json",
        f"{MODELS}/mixtral-8x22b-instruct-v0.1",
        3,
    ),
    "h100x8_mixtral-8x22b": (f"{FACTS}/h100x8.json", f"{MODELS}/mixtral-8x22b-instruct-v0.1", 0),
    "h100x8-2nodes_apertus-70b": (
        f"{FACTS}/h100x8-2nodes.json",
        f"{MODELS}/apertus-70b-instruct-2509",
        0,
    ),
    "rtx4090_devstral": (f"{FACTS}/rtx4090.json", f"{MODELS}/devstral-small-2505", 3),
    "cpu-avx2_mistral-7b": (f"{FACTS}/cpu-avx2.json", f"{MODELS}/mistral-7b-instruct-v0.3", 3),
    "nvml-mismatch_no-model": (f"{FACTS}/nvml-mismatch.json", None, 0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_json_is_golden(
    case: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    facts, model, code = CASES[case]
    argv = ["plan", "--facts", facts, "--json"] + (["--model", model] if model else [])
    assert main(argv) == code
    out = capsys.readouterr().out
    golden = GOLDEN / f"{case}.json"
    if os.environ.get("UPDATE_GOLDENS"):
        golden.write_text(out)
    assert json.loads(out) == json.loads(golden.read_text()), (
        f"run UPDATE_GOLDENS=1 pytest {__file__}"
    )


def test_golden_files_have_cases() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == sorted(CASES)


# --- the done-when points, through the real entry point ----------------------------


def test_detect_without_gpu_says_so_and_exits_0() -> None:
    result = run("detect")
    assert result.returncode == 0, result.stderr
    assert "NO USABLE GPU: No NVIDIA GPU on the PCI bus" in result.stdout


def test_detect_json_round_trips_through_plan_facts(tmp_path: Path) -> None:
    result = run("detect", "--json")
    assert result.returncode == 0 and result.stderr == ""
    saved = tmp_path / "host.json"
    saved.write_text(result.stdout)
    (host,) = load_facts(saved)
    assert host.gpu.status == "no-nvidia-device" and host.cpu.logical_cores >= 1
    plan = run("plan", "--facts", str(saved), "--json")
    assert plan.returncode == 0
    assert json.loads(plan.stdout)["profile"]["name"] == "cpu-llamacpp"
    assert "NO USABLE GPU" in plan.stderr  # the notice reaches a person even in JSON mode


@pytest.mark.parametrize(
    ("host", "profile"),
    [
        ("h100x8", "h100-cluster"),
        ("a100-80gb", "a100-single"),
        ("rtx4090", "rtx4090"),
        ("cpu-avx512", "cpu-llamacpp"),
    ],
)
def test_plan_auto_picks(host: str, profile: str) -> None:
    result = run("plan", "--profile", "auto", "--facts", f"{FACTS}/{host}.json")
    assert result.returncode == 0, result.stderr
    assert f"Profile: {profile} (chosen automatically)" in result.stdout
    if profile == "cpu-llamacpp":
        assert "!! NO USABLE GPU:" in result.stdout


def test_mixtral_8x22b_on_a100_is_refused_with_what_would_fit() -> None:
    result = run(
        "plan",
        "--facts",
        f"{FACTS}/a100-80gb.json",
        "--model",
        f"{MODELS}/mixtral-8x22b-instruct-v0.1",
    )
    assert result.returncode == ExitCode.DOES_NOT_FIT
    assert "verdict: DOES NOT FIT" in result.stdout
    assert "profile h100-cluster: 1 node(s) x 8 GPU(s)" in result.stdout
    assert "int4 (awq_marlin) would not fit either" in result.stdout
    assert "Traceback" not in result.stderr


def test_force_accepts_a_misfit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    argv = [
        "plan",
        "--facts",
        f"{FACTS}/a100-80gb.json",
        "--model",
        f"{MODELS}/mixtral-8x22b-instruct-v0.1",
    ]
    assert main([*argv, "--force", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["verdict"] == "forced"
    assert "continuing because --force was given" in captured.err


def test_requested_profile_misfit_exits_3() -> None:
    result = run(
        "plan",
        "--profile",
        "rtx4090",
        "--facts",
        f"{FACTS}/a100-80gb.json",
        "--model",
        f"{MODELS}/apertus-70b-instruct-2509",
    )
    assert result.returncode == 3
    assert (
        "warning: profile rtx4090 was requested but does not match this hardware" in result.stdout
    )


def test_profiles_json_lists_the_four_and_the_rehearsals() -> None:
    result = run("profiles", "--json")
    assert result.returncode == 0
    assert [p["name"] for p in json.loads(result.stdout)] == [
        "a100-single",
        "cpu-llamacpp",
        "cpu-vllm-group",
        "cpu-vllm",
        "h100-cluster",
        "rtx4090",
    ]


# --- bad input: a clear message, exit 2, no traceback, nothing on stdout -------------


def test_truncated_facts_file() -> None:
    result = run("plan", "--facts", f"{FACTS}/bad/truncated.json")
    assert_clean_failure(result, 2, "truncated")


def test_malformed_facts_file() -> None:
    assert_clean_failure(run("plan", "--facts", f"{FACTS}/bad/malformed.json"), 2, "malformed.json")


def test_missing_facts_file() -> None:
    assert_clean_failure(run("plan", "--facts", "no/such/facts.json"), 2, "no/such/facts.json")


def test_unknown_profile() -> None:
    result = run("plan", "--profile", "a100", "--facts", f"{FACTS}/a100-80gb.json")
    assert_clean_failure(result, 2, "unknown profile 'a100'", "a100-single")


def test_profile_file_with_a_typo(tmp_path: Path) -> None:
    (tmp_path / "unknown-key.yaml").write_text(
        (ROOT / "tests/fixtures/profiles/bad/unknown-key.yaml").read_text()
    )
    result = run("plan", "--profiles-dir", str(tmp_path), "--facts", f"{FACTS}/a100-80gb.json")
    assert_clean_failure(result, 2, "did you mean `gpu_memory_utilization`?")


def test_model_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    result = run("plan", "--facts", f"{FACTS}/a100-80gb.json", "--model", str(tmp_path))
    assert_clean_failure(result, 2, "config.json")


def test_model_path_missing() -> None:
    result = run("plan", "--facts", f"{FACTS}/a100-80gb.json", "--model", "no/such/model")
    assert_clean_failure(result, 2, "no/such/model")


def test_corrupt_gguf(tmp_path: Path) -> None:
    corrupt = tmp_path / "model.gguf"
    corrupt.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 20)
    result = run("plan", "--facts", f"{FACTS}/cpu-avx2.json", "--model", str(corrupt))
    assert_clean_failure(result, 2, "model.gguf")


@pytest.mark.parametrize("value", ["0", "-5", "lots"])
def test_bad_context_is_a_usage_error(value: str) -> None:
    result = run("plan", "--facts", f"{FACTS}/a100-80gb.json", "--context", value)
    assert_clean_failure(result, 2, "--context")


def test_detect_json_stays_on_the_fast_path() -> None:
    # Start-up time is budgeted (bench/detect): no renderer, no validator, no GGUF reader.
    code = (
        "import contextlib, io, json, sys\n"
        "from appliance.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()): main(['detect', '--json'])\n"
        "print(json.dumps([m for m in ('rich', 'pydantic', 'gguf', 'numpy', 'yaml') if m in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert json.loads(result.stdout) == []

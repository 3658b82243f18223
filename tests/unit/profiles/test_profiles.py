"""Hardware profiles: the built-in ones load; every invalid fixture fails with its own message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import ProfileError
from appliance.exitcodes import ExitCode
from appliance.plan.profiles import (
    LlamaCppEngine,
    VllmEngine,
    get_profile,
    load_profile_file,
    load_profiles,
    profile_json_schema,
)

ROOT = Path(__file__).resolve().parents[3]
BAD = ROOT / "tests/fixtures/profiles/bad"

# One fixture per failure mode -> what the message must say.
EXPECTED = {
    "unknown-key": "unknown key `engine.gpu_memory_utilisation`; did you mean `gpu_memory_utilization`?",
    "unknown-top-level-key": "unknown key `prefrence`; did you mean `preference`?",
    "missing-field": "missing required key `match`",
    "wrong-type": '`match.gpu.min_count_per_node` has the wrong type: expected an integer, found string "eight"',
    "out-of-range": "`engine.gpu_memory_utilization`: Input should be less than or equal to 0.98; found number 1.5",
    "name-mismatch": "profile name 'a100-single' does not match the file name 'name-mismatch'",
    "quant-needs-newer-gpu": "needs compute capability 8.0 or newer, but match.gpu.min_compute_capability is 7.5",
    "engine-kind-mismatch": "a CPU profile (match.accelerator: cpu) with engine.kind: vllm needs engine.device: cpu",
    "vllm-cpu-no-kv-space": "engine.device: cpu needs engine.cpu_kvcache_space_gib",
    "gpu-profile-cpu-device": "a GPU profile (match.accelerator: gpu) needs engine.device: cuda",
    "tp-exceeds-gpus": "engine.tensor_parallel_size is 8 but the profile matches nodes with only 1 GPU(s)",
    "pipeline-nodes-single-node": "pipeline_parallel_size is 'nodes' but match.gpu.nodes.max is 1",
    "multi-node-no-backend": "needs engine.distributed_executor_backend: mp",
    "ray-backend": "distributed_executor_backend 'ray' is not supported: the pinned vLLM (0.32) refuses --nnodes with Ray",
    "cpu-group-eager": "engine.enforce_eager must be false on a multi-node CPU profile",
    "cpu-group-tensor-parallel": "write tensor_parallel_size: 1 and pipeline_parallel_size: nodes",
    "llamacpp-multi-node": "engine.kind: llamacpp serves on one host: match.cpu.nodes.max must be 1",
    "bad-regex": "name pattern 'A100(' is not a valid regex",
    "bad-schema-version": "`schema_version` has an unknown value: expected one of 1, found number 2",
    "unknown-engine-kind": "Input tag 'tgi' found using 'kind' does not match any of the expected tags",
    "bad-compute-capability": "expected a compute capability written MAJOR.MINOR",
    "unknown-quantization": "`engine.quantization[1]` has an unknown value: expected one of 'none', 'fp8'",
    "gpu-section-missing": "accelerator 'gpu' needs a 'gpu' section",
    "nodes-inverted": "nodes.max (2) is smaller than nodes.min (4)",
    "bad-yaml": "not valid YAML at line 5, column 7",
    "empty": "expected a YAML mapping with schema_version, name, match, engine; found an empty file",
    "not-a-mapping": "found a list",
    "duplicate-key": "duplicate key 'preference' (first given at line 6)",
}


def test_builtin_profiles() -> None:
    profiles = load_profiles()
    assert list(profiles) == [
        "a100-single", "cpu-llamacpp", "cpu-vllm-group", "cpu-vllm", "h100-cluster", "rtx4090",
    ]  # fmt: skip
    assert isinstance(profiles["cpu-llamacpp"].engine, LlamaCppEngine)
    for name in ("a100-single", "h100-cluster", "rtx4090"):
        engine = profiles[name].engine
        assert isinstance(engine, VllmEngine) and engine.device == "cuda"
    rehearsals = ("cpu-vllm", "cpu-vllm-group")
    for name in rehearsals:
        rehearsal = profiles[name]
        assert isinstance(rehearsal.engine, VllmEngine) and rehearsal.engine.device == "cpu"
    assert {n for n, p in profiles.items() if p.rehearsal} == set(rehearsals)
    # Preference orders GPU profiles above the CPU fallback (the rehearsal is never automatic).
    assert profiles["cpu-llamacpp"].preference < min(
        p.preference for n, p in profiles.items() if n not in ("cpu-llamacpp", *rehearsals)
    )
    # Multi-node: the H100 cluster and the CPU group rehearsal, both on vLLM's own launcher.
    assert {n for n, p in profiles.items() if p.multi_node} == {"h100-cluster", "cpu-vllm-group"}
    group = profiles["cpu-vllm-group"]
    assert (group.nodes.min, group.nodes.max) == (2, 4)
    assert isinstance(group.engine, VllmEngine)
    assert group.engine.pipeline_parallel_size == "nodes" and not group.engine.enforce_eager
    assert profiles["cpu-vllm"].nodes.max == 1 and profiles["cpu-llamacpp"].nodes.max == 1
    for name in ("h100-cluster", "cpu-vllm-group"):
        engine = profiles[name].engine
        assert isinstance(engine, VllmEngine) and engine.distributed_executor_backend == "mp"


def test_every_bad_fixture_has_an_expectation() -> None:
    assert sorted(p.stem for p in BAD.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_profile_is_rejected_with_a_specific_message(name: str) -> None:
    path = BAD / f"{name}.yaml"
    with pytest.raises(ProfileError) as caught:
        load_profile_file(path)
    assert EXPECTED[name] in str(caught.value)
    assert str(path) in caught.value.message  # names the file
    assert caught.value.exit_code == ExitCode.USAGE


def test_unknown_profile_name_suggests_the_closest() -> None:
    with pytest.raises(ProfileError) as caught:
        get_profile(load_profiles(), "a100-singel")
    assert "unknown profile 'a100-singel'" in caught.value.message
    assert "Did you mean 'a100-single'?" in str(caught.value.hint)


def test_profiles_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not exist"):
        load_profiles(tmp_path / "nope")
    with pytest.raises(ProfileError, match=r"no hardware profiles \(\*\.yaml\)"):
        load_profiles(tmp_path)


def test_a_bad_file_in_a_directory_stops_loading(tmp_path: Path) -> None:
    (tmp_path / "a100-single.yaml").write_text(
        (ROOT / "hardware_profiles/a100-single.yaml").read_text()
    )
    (tmp_path / "unknown-key.yaml").write_text((BAD / "unknown-key.yaml").read_text())
    with pytest.raises(ProfileError, match=r"unknown-key\.yaml"):
        load_profiles(tmp_path)


def test_schema_file_matches_the_models() -> None:
    on_disk = json.loads((ROOT / "hardware_profiles/profile.schema.json").read_text())
    assert on_disk == profile_json_schema(), (
        "schema drifted: run `make schemas` and commit the result"
    )


def test_compute_capability_is_written_as_a_string() -> None:
    dumped = load_profiles()["h100-cluster"].model_dump(mode="json")
    assert dumped["match"]["gpu"]["min_compute_capability"] == "9.0"
    assert load_profiles()["h100-cluster"].match.gpu is not None

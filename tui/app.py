"""The app and its one factory, ``build_app``, used by ``appliance tui`` and by every test.

``build_app(backend, options=...)`` gives the app a ``Backend`` (the real core,
or a test's fake) and the command line's starting values; the first screen is
Hardware. The site file (``--site``) is loaded there, before the app starts:
no screen asks for it, so a bad one is the CLI's error exit (2, the CLI's
words), not a dialog in a run that could not use it. ``run`` is what the CLI
calls: the real core, a real terminal. The app's return value is an exit code
as the CLI's: 0, 5 when a host failed, 130 after a cancelled deploy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from tui.backend import Backend, CoreBackend
from tui.session import AppOptions, Session

if TYPE_CHECKING:
    from appliance.deploy.site import Site


class ApplianceApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "appliance"
    ENABLE_COMMAND_PALETTE = False  # every action is a visible key or button
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, backend: Backend, options: AppOptions, site: Site | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.session = Session(options, site=site)
        self.exit_code = 0

    def on_mount(self) -> None:
        from tui.screens.hardware import HardwareScreen

        self.push_screen(HardwareScreen())

    async def action_quit(self) -> None:
        from tui.screens.base import StepScreen

        screen = self.screen
        if isinstance(screen, StepScreen) and not screen.request_quit():
            return  # the screen asks first (a deploy is running)
        self.exit(self.exit_code)


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

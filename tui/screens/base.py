"""What every step screen shares: the step bar, Back/Next, help, and core calls in threads.

Core calls never run on the UI thread. ``call`` runs a function in a worker
thread and posts ``Answered`` or ``Failed``; ``stream`` drains an event
generator the same way, posting each event as ``EventEmitted``. An
``ApplianceError`` becomes an error dialog with the CLI's words; any other
exception is a bug and ends the app with its traceback, as in the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, ClassVar, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Label

from tui.messages import Answered, EventEmitted, Failed
from tui.screens.dialogs import ErrorDialog
from tui.screens.help import HelpScreen
from tui.widgets.stepbar import StepBar

if TYPE_CHECKING:
    from appliance.errors import ApplianceError
    from appliance.events import Event
    from tui.app import ApplianceApp
    from tui.backend import Backend
    from tui.session import Session


class StepScreen(Screen[None]):
    STEP: ClassVar[str]
    ABOUT: ClassVar[str] = ""
    KEYS: ClassVar[tuple[tuple[str, str], ...]] = ()  # extra keys for the help screen
    NEXT_LABEL: ClassVar[str] = "Next >"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "next", "Next", priority=True),
        Binding("escape", "back", "Back"),
        Binding("f1", "help", "Help", priority=True),
        Binding("question_mark", "help", "Help", show=False),
    ]

    # --- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP)
        with Vertical(id="body"):
            yield from self.compose_body()
        with Horizontal(id="nav"):
            yield Button("< Back", id="back", compact=True)
            yield Label("", id="status")
            yield Button(self.NEXT_LABEL, id="next", variant="primary", compact=True)
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    # --- shared state -----------------------------------------------------------------------

    @property
    def appliance(self) -> ApplianceApp:
        return cast("ApplianceApp", self.app)

    @property
    def session(self) -> Session:
        return self.appliance.session

    @property
    def backend(self) -> Backend:
        return self.appliance.backend

    def set_status(self, text: str | Text) -> None:
        self.query_one("#status", Label).update(text)

    # --- core calls in worker threads --------------------------------------------------------

    def call(self, what: str, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in a thread; post ``Answered(what, result)`` or ``Failed(what, error)``."""
        from appliance.errors import ApplianceError

        def work() -> None:
            try:
                result = fn()
            except ApplianceError as exc:
                self.post_message(Failed(what, exc))
            else:
                self.post_message(Answered(what, result))

        self.run_worker(work, thread=True, group=what, name=what)

    def stream(self, what: str, start: Callable[[], Generator[Event, None, Any]]) -> None:
        """Drain the generator ``start()`` in a thread, posting each event, then the result."""
        from appliance.events import drain

        def emit(event: Event) -> None:
            self.post_message(EventEmitted(what, event))

        def run() -> Any:
            return drain(start(), emit)

        self.call(what, run)

    def on_failed(self, message: Failed) -> None:
        message.stop()
        self.failed(message.what, message.error)

    def failed(self, what: str, error: ApplianceError) -> None:
        """Show a core error; screens extend this to reset their own state."""
        self.set_status(Text.assemble(("FAILED ", "bold red"), f"{what}: see the error"))
        self.app.push_screen(ErrorDialog(error))

    # --- navigation ---------------------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "next":
            event.stop()
            self.action_next()
        elif event.button.id == "back":
            event.stop()
            self.action_back()

    def action_next(self) -> None:
        """Check this step is complete, then go to the next one."""

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:  # the default screen, then the first step
            self.app.pop_screen()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.STEP, self.ABOUT, self.KEYS))

    def request_quit(self) -> bool:
        """Whether the app may quit now; a screen with work in flight asks first."""
        return True

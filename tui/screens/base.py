"""What every step screen shares: the step bar, Back/Next, help, and core calls in threads.

Core calls never run on the UI thread. ``call`` runs a function in a worker
thread and posts the call's own answer message (``tui.messages``: ``Planned``,
``Verified``, ...) or ``Failed``; ``stream`` drains an event generator the
same way, posting each event as ``EventEmitted``. An ``ApplianceError``
becomes an error dialog with the CLI's words; any other exception is a bug
and ends the app with its traceback, as in the CLI.

Screens never import each other or the app: what they need from the app is
``tui.installer.Installer``, and a complete step calls ``step_done``; the
app's step table decides the next screen.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, ClassVar, TypeVar, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Label

from tui.messages import Call, EventEmitted, Failed
from tui.screens.dialogs import ErrorDialog
from tui.screens.help import HelpScreen
from tui.widgets.stepbar import StepBar

if TYPE_CHECKING:
    from appliance.events import Event
    from tui.backend import Backend
    from tui.installer import Installer
    from tui.session import Session

T = TypeVar("T")


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
        yield StepBar(self.STEP, self.installer.step_names)
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
    def installer(self) -> Installer:
        """The app, as the screens see it (``tui.installer.Installer``)."""
        return cast("Installer", self.app)

    @property
    def session(self) -> Session:
        return self.installer.session

    @property
    def backend(self) -> Backend:
        return self.installer.backend

    def set_status(self, text: str | Text) -> None:
        self.query_one("#status", Label).update(text)

    # --- core calls in worker threads --------------------------------------------------------

    def call(
        self,
        call: Call,
        fn: Callable[[], T],
        answer: Callable[[T], Message],
        *,
        host: str | None = None,
    ) -> None:
        """Run ``fn`` in a thread; post ``answer(result)`` or ``Failed(call, error, host)``."""
        from appliance.errors import ApplianceError

        def work() -> None:
            try:
                result = fn()
            except ApplianceError as exc:
                self.post_message(Failed(call, exc, host))
            else:
                self.post_message(answer(result))

        label = call.label(host)
        self.run_worker(work, thread=True, group=label, name=label)

    def stream(
        self,
        call: Call,
        start: Callable[[], Generator[Event, None, T]],
        answer: Callable[[T], Message],
    ) -> None:
        """Drain the generator ``start()`` in a thread, posting each event, then the answer."""
        from appliance.events import drain

        def emit(event: Event) -> None:
            self.post_message(EventEmitted(call, event))

        def run() -> T:
            return drain(start(), emit)

        self.call(call, run, answer)

    def on_failed(self, message: Failed) -> None:
        message.stop()
        self.failed(message)

    def failed(self, failure: Failed) -> None:
        """Show a core error; screens extend this to reset their own state."""
        self.set_status(Text.assemble(("FAILED ", "bold red"), f"{failure.label}: see the error"))
        self.app.push_screen(ErrorDialog(failure.error))

    # --- navigation ---------------------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "next":
            event.stop()
            self.action_next()
        elif event.button.id == "back":
            event.stop()
            self.action_back()

    def action_next(self) -> None:
        """Check this step is complete, then ``done``."""

    def done(self) -> None:
        """This step is complete: the app goes on to what follows it."""
        self.installer.step_done(self.STEP)

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:  # the default screen, then the first step
            self.app.pop_screen()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.STEP, self.ABOUT, self.KEYS))

    def request_quit(self) -> bool:
        """Whether the app may quit now; a screen with work in flight asks first."""
        return True

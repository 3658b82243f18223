"""Modal dialogs: an error exactly as the CLI words it, and a yes/no confirmation."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from tui.present import error_lines

if TYPE_CHECKING:
    from appliance.errors import ApplianceError


class ErrorDialog(ModalScreen[None]):
    """``error: <message>`` and the hint, the lines ``appliance`` prints on stderr."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter,o", "close", "OK")]

    def __init__(self, error: ApplianceError) -> None:
        super().__init__(classes="dialog-screen")
        self.error = error

    def compose(self) -> ComposeResult:
        kind = type(self.error).__name__
        with Vertical(classes="dialog error-dialog"):
            yield Label(
                Text.assemble(("FAILED ", "bold"), f"{kind} (exit {int(self.error.exit_code)})"),
                classes="dialog-title",
            )
            with VerticalScroll(classes="dialog-body"):
                yield Static("\n".join(error_lines(self.error)), id="error-text", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("OK", id="ok", variant="primary", compact=True)

    def on_mount(self) -> None:
        self.query_one("#ok", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """A question with two answers; the safe one (No) has the focus."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, body: str, *, yes: str = "Yes", no: str = "No") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text, self.body, self.yes, self.no = title, body, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog confirm-dialog"):
            yield Label(Text(self.title_text, "bold"), classes="dialog-title")
            with VerticalScroll(classes="dialog-body"):
                yield Static(self.body, id="confirm-text", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.no} (n)", id="no", compact=True)
                yield Button(f"{self.yes} (y)", id="yes", variant="warning", compact=True)

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

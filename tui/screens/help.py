"""The help screen (``?`` or F1): what this step does, and every key."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

KEYS = (
    ("ctrl+n", "next step (or the Next button)"),
    ("escape", "previous step; closes a dialog"),
    ("tab / shift+tab", "move between fields and buttons"),
    ("enter", "press the focused button, choose the highlighted item"),
    ("? / F1", "this help"),
    ("ctrl+q", "quit (during a deploy: cancel safely first)"),
)


def help_text(step: str, about: str, extra: tuple[tuple[str, str], ...]) -> Text:
    # Paragraphs reflowed to the dialog's width (the source wraps at 80 columns).
    prose = "\n\n".join(" ".join(p.split()) for p in about.strip().split("\n\n"))
    text = Text.assemble((f"{step}\n", "bold"), prose, "\n\n", ("Keys\n", "bold"))
    for key, what in (*extra, *KEYS):
        text.append(f"  {key:<16}", "bold")
        text.append(f"{what}\n")
    text.append("\nThe mouse works too: click buttons, list items and fields.")
    return text


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,f1,question_mark", "close", "Close")]

    def __init__(self, step: str, about: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(classes="dialog-screen")
        self.text = help_text(step, about, extra)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help-dialog"):
            yield Label(Text("Help", "bold"), classes="dialog-title")
            with VerticalScroll(classes="dialog-body"):
                yield Static(self.text, id="help-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close (esc)", id="close", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)

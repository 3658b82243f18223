"""The one-line step indicator at the top of every step screen.

The current step is bracketed (not only highlighted), so it reads the same on
a monochrome serial console.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.session import STEPS


def step_text(current: str) -> Text:
    index = STEPS.index(current)
    text = Text.assemble(("appliance ", "bold"), f"{index + 1}/{len(STEPS)}  ")
    for i, name in enumerate(STEPS):
        if i:
            text.append(" > ", "dim")
        if i == index:
            text.append(f"[{name}]", "bold reverse")
        elif i < index:
            text.append(name)
        else:
            text.append(name, "dim")
    return text


class StepBar(Static):
    def __init__(self, current: str) -> None:
        super().__init__(step_text(current), id="stepbar")

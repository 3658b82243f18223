"""The one-line step indicator at the top of every step screen.

The current step is bracketed (not only highlighted), so it reads the same on
a monochrome serial console. The steps, in order, are the app's step table
(the screen passes them in: widgets know nothing of the app).
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


def step_text(current: str, steps: tuple[str, ...]) -> Text:
    index = steps.index(current)
    text = Text.assemble(("appliance ", "bold"), f"{index + 1}/{len(steps)}  ")
    for i, name in enumerate(steps):
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
    def __init__(self, current: str, steps: tuple[str, ...]) -> None:
        super().__init__(step_text(current, steps), id="stepbar")

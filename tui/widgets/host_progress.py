"""One row per host on the Deploy screen: its name, a progress bar, and what it is doing.

The state is always written as words (waiting, planned, converging, OK,
FAIL); the bar and colours only repeat it.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar


class HostProgress(Horizontal):
    def __init__(self, host: str) -> None:
        super().__init__(classes="host-progress")
        self.host = host

    def compose(self) -> ComposeResult:
        yield Label(self.host, classes="host-name")
        yield ProgressBar(total=1, show_eta=False, classes="host-bar")  # no animation
        yield Label("waiting", classes="host-state")

    def update_progress(self, done: int, total: int | None, what: str) -> None:
        self.query_one(ProgressBar).update(total=total, progress=done)
        self.query_one(".host-state", Label).update(what)

    def finish(self, word: Text, detail: str) -> None:
        bar = self.query_one(ProgressBar)
        bar.update(total=bar.total or 1, progress=bar.total or 1)
        self.query_one(".host-state", Label).update(Text.assemble(word, f" {detail}"))

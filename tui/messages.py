"""Messages the worker threads post to the screens: past tense, one per core answer.

Workers never touch widgets; they post one of these (``post_message`` is
thread-safe) and the screen's handler updates the display on the UI thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from appliance.errors import ApplianceError
    from appliance.events import Event


class Answered(Message):
    """A core call returned ``result`` (``what`` names the call, e.g. "plan")."""

    def __init__(self, what: str, result: Any) -> None:
        super().__init__()
        self.what = what
        self.result = result


class EventEmitted(Message):
    """A long operation yielded an event (Started, Progress, Warned, Finished)."""

    def __init__(self, what: str, event: Event) -> None:
        super().__init__()
        self.what = what
        self.event = event


class Failed(Message):
    """A core call raised an ``ApplianceError``; the screen shows it as the CLI would."""

    def __init__(self, what: str, error: ApplianceError) -> None:
        super().__init__()
        self.what = what
        self.error = error

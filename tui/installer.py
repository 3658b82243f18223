"""What a step screen needs from the app, as a Protocol: the screens never import the app.

The app (``tui.app.ApplianceApp``) owns the step table and satisfies this
Protocol (checked by mypy there); a screen reaches it as ``self.app`` typed
through ``Installer``. A screen that is complete calls ``step_done`` with its
step's name, and the app decides what comes next (the next step's screen, or
the end of the run after the last step); no screen names another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tui.backend import Backend
    from tui.session import Session


class Installer(Protocol):
    backend: Backend
    session: Session
    exit_code: int  # the run's exit code as the CLI's: 0, 5 (a host failed), 130 (cancelled)

    @property
    def step_names(self) -> tuple[str, ...]:
        """Every step's name, in order (for the step bar)."""
        ...

    def step_done(self, step: str) -> None:
        """``step`` is complete: go on to the next step, or end the run after the last one."""
        ...
